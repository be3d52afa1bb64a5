#ifndef STRAIT_FUZZ_DRIVER_H
#define STRAIT_FUZZ_DRIVER_H

#include <stddef.h>
#include <stdint.h>

/// libFuzzer's entry for programs that keep their own main (compiler-rt's FuzzerDriver.cpp):
/// parses libFuzzer's flags from argc/argv and runs `callback` on every input. Linked in by
/// `-sanitize=fuzzer`; only referenced when Swift code is built with -DFUZZING.
int LLVMFuzzerRunDriver(int *argc, char ***argv, int (*callback)(const uint8_t *data, size_t size));

#endif
