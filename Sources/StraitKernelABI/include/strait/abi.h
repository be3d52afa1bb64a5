// SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0)
// Structs shared by Strait's kernel programs (compiled with clang -target bpf) and its Swift code
// (imported as the StraitKernelABI module). Fixed layout: only fixed-width fields, explicit padding.
#pragma once
#include <linux/types.h>
#include "accel.h"
#include "drop.h"
#include "lb.h"
#include "proxy.h"
#include "steer.h"
#include "limit.h"
