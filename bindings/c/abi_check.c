/*
 * The plain C-ABI check: the header uniffi generates (for Swift's module
 * map) compiles as C11, links against libconcord_ffi, and drives the
 * library through the raw ABI the Swift, Kotlin and Python bindings use:
 *
 *  - the contract version and every API checksum match what the generated
 *    bindings expect (checks.inc, extracted from them by `cargo xtask c-abi-test`);
 *  - RustBuffer allocation round-trips;
 *  - open_database opens a real database, replica_id returns 16 hex digits,
 *    shutdown_blocking and the object's free succeed;
 *  - a failing open reports a typed error (status code 1, ConcordError.Store)
 *    instead of crashing.
 *
 * Prints one line per check and closes with `N passed, N failed`.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The header uses clang's nullability qualifiers; other compilers ignore them. */
#ifndef __clang__
#define _Nullable
#define _Nonnull
#endif
#include "concord_ffiFFI.h"

static int passed, failed;

static void check(int ok, const char *what) {
    printf("%s %s\n", ok ? "ok  " : "FAIL", what);
    if (ok) passed++; else failed++;
}

static RustBuffer buffer(const void *bytes, size_t len) {
    RustCallStatus status = {0};
    ForeignBytes foreign = {(int32_t)len, (const uint8_t *)bytes};
    RustBuffer buf = ffi_concord_ffi_rustbuffer_from_bytes(foreign, &status);
    if (status.code != 0) {
        fprintf(stderr, "rustbuffer_from_bytes failed\n");
        exit(2);
    }
    return buf;
}

static void release(RustBuffer buf) {
    RustCallStatus status = {0};
    ffi_concord_ffi_rustbuffer_free(buf, &status);
}

/* Big-endian i32, as uniffi serializes lengths and variant indexes. */
static int32_t read_i32(const uint8_t *p) {
    return (int32_t)(((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3]);
}

/* A handle to a freshly opened database at `path`, or 0 with *status set. */
static uint64_t open_at(const char *path, RustCallStatus *status) {
    /* OpenOptions { relay: None, agent: None }; no token provider. */
    static const uint8_t options[] = {0, 0};
    static const uint8_t no_provider[] = {0};
    return uniffi_concord_ffi_fn_func_open_database(
        buffer(path, strlen(path)), buffer(options, sizeof options),
        buffer(no_provider, sizeof no_provider), status);
}

int main(void) {
    check(ffi_concord_ffi_uniffi_contract_version() == EXPECTED_CONTRACT_VERSION,
          "contract version matches the generated bindings");
#define CHECKSUM(fn, expected) check(fn() == (expected), #fn " matches");
#include "checks.inc"
#undef CHECKSUM

    RustCallStatus status = {0};
    RustBuffer buf = ffi_concord_ffi_rustbuffer_alloc(64, &status);
    check(status.code == 0 && buf.capacity >= 64 && buf.len == 64 && buf.data != NULL, "rustbuffer_alloc");
    release(buf);

    char dir[] = "/tmp/concord-abi-XXXXXX";
    if (!mkdtemp(dir)) {
        perror("mkdtemp");
        return 2;
    }
    char path[256];
    snprintf(path, sizeof path, "%s/abi.db", dir);

    memset(&status, 0, sizeof status);
    uint64_t db = open_at(path, &status);
    check(status.code == 0 && db != 0, "open_database through the C ABI");
    if (status.code == 0) {
        RustBuffer id = uniffi_concord_ffi_fn_method_database_replica_id(
            uniffi_concord_ffi_fn_clone_database(db, &status), &status);
        check(status.code == 0 && id.len == 16, "replica_id is 16 hex digits");
        release(id);

        /* The file is locked while open: a second open is a typed error. */
        RustCallStatus second = {0};
        open_at(path, &second);
        int store_error = second.code == 1 && second.errorBuf.len > 4 &&
                          read_i32(second.errorBuf.data) == 3; /* ConcordError.Store, 1-based */
        check(store_error, "a second open is ConcordError.Store, not a crash");
        release(second.errorBuf);

        uniffi_concord_ffi_fn_method_database_shutdown_blocking(
            uniffi_concord_ffi_fn_clone_database(db, &status), &status);
        check(status.code == 0, "shutdown_blocking");
        uniffi_concord_ffi_fn_free_database(db, &status);
        check(status.code == 0, "free_database");
    }

    RustCallStatus bad = {0};
    open_at("/nonexistent-dir/for/sure/abi.db", &bad);
    check(bad.code == 1 && bad.errorBuf.len > 4, "opening in a missing directory is an error status");
    release(bad.errorBuf);

    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", dir);
    printf("%d passed, %d failed\n", passed, failed);
    return failed == 0 ? 0 : 1;
}
