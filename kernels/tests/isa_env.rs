//! `ELIDE_ISA` with a bad value fails at first use with the valid values. Its own test binary
//! (one process, one test): the active path is read once per process.

use elide_kernels::Isa;

#[test]
fn an_unknown_elide_isa_is_an_error_at_first_use() {
    // SAFETY-free in edition 2021; this binary runs no other test, so no thread reads the
    // environment concurrently.
    std::env::set_var("ELIDE_ISA", "avx9000");
    let err = Isa::try_active().unwrap_err().to_string();
    assert!(
        err.starts_with("ELIDE_ISA: \"avx9000\" names no instruction set; valid values: portable, avx2, avx512"),
        "{err}"
    );
    let panic = std::panic::catch_unwind(Isa::active).unwrap_err();
    let message = panic.downcast_ref::<String>().expect("a formatted panic message");
    assert_eq!(*message, err);
}
