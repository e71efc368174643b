//! Generated tasks with a known optimum, for `elide compare`: every result reads as a gap to
//! the best achievable.

mod domains;
mod pets;

pub use domains::{Domains, DomainsConfig};
pub use pets::{Pets, PetsBatch, PetsConfig};
