//! uniffi's code generator, pinned to this crate's uniffi version:
//! `uniffi-bindgen generate --language kotlin --out-dir DIR libconcord_ffi.so`.

fn main() {
    uniffi::uniffi_bindgen_main()
}
