// The kernels built for the "avx2" instruction set (flags in setup.py / CMakeLists.txt).
#define LRS_ISA_NS isa_avx2
#define LRS_ISA_NAME "avx2"
#define LRS_ISA_TABLE kKernelsAvx2
#include "kernels_impl.h"
