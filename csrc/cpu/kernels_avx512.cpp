// The kernels built for the "avx512" instruction set (flags in setup.py / CMakeLists.txt).
#define LRS_ISA_NS isa_avx512
#define LRS_ISA_NAME "avx512"
#define LRS_ISA_TABLE kKernelsAvx512
#include "kernels_impl.h"
