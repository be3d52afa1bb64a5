// The declaration in include/strait_fuzz_driver.h is all this target provides; SwiftPM needs a
// source file to build a C target.
#include "strait_fuzz_driver.h"
