//! The `elide` program refuses a bad `ELIDE_ISA` before it runs anything, naming the valid values.

use std::process::Command;

#[test]
fn a_bad_elide_isa_stops_the_program_with_the_valid_values() {
    let out = Command::new(env!("CARGO_BIN_EXE_elide")).arg("info").env("ELIDE_ISA", "neon9").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr
            .starts_with("elide: ELIDE_ISA: \"neon9\" names no instruction set; valid values: portable, avx2, avx512"),
        "{stderr}"
    );
    let ok = Command::new(env!("CARGO_BIN_EXE_elide")).arg("info").env("ELIDE_ISA", "portable").output().unwrap();
    assert!(String::from_utf8(ok.stdout).unwrap().starts_with("isa: portable"));
}
