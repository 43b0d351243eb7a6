// The kernels built for the "baseline" instruction set (flags in setup.py / CMakeLists.txt).
#define LRS_ISA_NS isa_baseline
#define LRS_ISA_NAME "baseline"
#define LRS_ISA_TABLE kKernelsBaseline
#include "kernels_impl.h"
