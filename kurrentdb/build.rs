//! Marks the build that has a KurrentDB server to test against: with `WEFT_TEST_KURRENTDB` set (a connection
//! string), the contract suite in `tests/contract.rs` runs; without it every case is reported as ignored,
//! never as passed.

fn main() {
    println!("cargo::rustc-check-cfg=cfg(kurrentdb_server)");
    println!("cargo::rerun-if-env-changed=WEFT_TEST_KURRENTDB");
    if std::env::var_os("WEFT_TEST_KURRENTDB").is_some_and(|v| !v.is_empty()) {
        println!("cargo::rustc-cfg=kurrentdb_server");
    }
}
