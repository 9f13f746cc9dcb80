/*
 * version.c - the library's version at run time.
 *
 * Invariant: the answers are the TL_VERSION and TL_VERSION_NUMBER this
 * library was compiled with, so a program that compares them with the macros
 * of the header it was compiled against detects a mismatched pair. CMake takes
 * the project version (and so the soname) from the same header macros.
 */
#include "tokenledger.h"

const char *tl_version(void)
{
  return TL_VERSION;
}

int tl_version_number(void)
{
  return TL_VERSION_NUMBER;
}
