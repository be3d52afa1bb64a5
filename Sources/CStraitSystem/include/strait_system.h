// OS headers the Swift Glibc module does not bring in.
#pragma once
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <sched.h>
#include <sys/statfs.h>
#include <sys/mount.h>
#include <sys/ioctl.h>
#include <sys/sendfile.h>
#include <linux/sockios.h>
