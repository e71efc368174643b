//! The elide tensor.
