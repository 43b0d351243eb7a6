// The memory pattern of the int8-moment AdamW step with as little arithmetic as it allows: how fast can a
// kernel that moves what ours moves go on this machine? (Issue 15; figures in bench/RESULTS.md.)
//
// 19.99M fp32 parameters in 50 tensors of 1562 whole blocks of 256, fp32 gradients, int8 first / uint8
// second moment codes: read p, g, m, v and write p, m, v (16 B/param), two passes per block through an
// L1 scratch (the codes need the block's absmax first), OpenMP over chunks of 65536 elements like
// csrc/cpu. Variants: with or without a square root and a division per element; software prefetch or
// none; "cold" (a 1 GiB buffer written between repeats, as the interleaved rounds of bench.run evict the
// step's tensors) or "hot"; and "one pass", which writes codes without waiting for the block's absmax
// (not a valid codec: the bound that the absmax's second pass costs against).
// It does not compute AdamW: it is a floor, not a kernel.
//
//   g++ -O3 -march=native -fopenmp bench/native/int8_pattern.cpp -o /tmp/int8_pattern
//   OMP_NUM_THREADS=2 /tmp/int8_pattern
#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <vector>

namespace {

constexpr int kTensors = 50;
constexpr long kChunk = 65536, kBlock = 256;
constexpr long kPerTensor = 1562 * kBlock;  // whole blocks (the loops have no tail): 19.99M in all
float* P[kTensors];
float* G[kTensors];
int8_t* M[kTensors];
uint8_t* V[kTensors];

template <bool kMath, int kPrefetch, bool kTwoPass = true>
void step() {
  constexpr long chunks_per_tensor = (kPerTensor + kChunk - 1) / kChunk;
#pragma omp parallel for schedule(static)
  for (long k = 0; k < kTensors * chunks_per_tensor; ++k) {
    const int t = static_cast<int>(k / chunks_per_tensor);
    const long c = (k % chunks_per_tensor) * kChunk, e = std::min(kPerTensor, c + kChunk);
    float *p = P[t], *g = G[t];
    int8_t* m8 = M[t];
    uint8_t* v8 = V[t];
    alignas(64) float mb[kBlock], rb[kBlock];
    for (long s = c; s < e; s += kBlock) {
      if (kPrefetch) {
        const long b = s + kPrefetch, bend = std::min(b + kBlock, kPerTensor);
        for (long x = b; x < bend; x += 16) {
          __builtin_prefetch(p + x, 1, 3);
          __builtin_prefetch(g + x, 0, 3);
        }
        for (long x = b; x < bend; x += 64) {
          __builtin_prefetch(m8 + x, 1, 3);
          __builtin_prefetch(v8 + x, 1, 3);
        }
        __asm__ __volatile__("");
      }
      __m512 xm = _mm512_setzero_ps(), xv = xm;
      for (long j = 0; j < kBlock; j += 16) {
        const long x = s + j;
        __m512 mm = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(m8 + x))));
        __m512 vv = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(v8 + x))));
        const __m512 gg = _mm512_loadu_ps(g + x);
        __m512 pp = _mm512_loadu_ps(p + x);
        mm = _mm512_fmadd_ps(mm, _mm512_set1_ps(0.9f), _mm512_mul_ps(gg, _mm512_set1_ps(0.1f)));
        vv = _mm512_fmadd_ps(vv, _mm512_set1_ps(0.999f), _mm512_mul_ps(gg, gg));
        if (kMath) {
          vv = _mm512_sqrt_ps(vv);
          pp = _mm512_sub_ps(pp, _mm512_div_ps(mm, _mm512_add_ps(vv, _mm512_set1_ps(1e-8f))));
        } else {
          pp = _mm512_fnmadd_ps(mm, vv, pp);
        }
        _mm512_storeu_ps(p + x, pp);
        if (kTwoPass) {
          _mm512_store_ps(mb + j, mm);
          _mm512_store_ps(rb + j, vv);
        } else {  // codes at once, without the block's absmax: no valid codec, a lower bound
          _mm_storeu_si128(reinterpret_cast<__m128i*>(m8 + x), _mm512_cvtepi32_epi8(_mm512_cvtps_epi32(mm)));
          _mm_storeu_si128(reinterpret_cast<__m128i*>(v8 + x), _mm512_cvtepi32_epi8(_mm512_cvtps_epi32(vv)));
        }
        xm = _mm512_max_ps(xm, mm);
        xv = _mm512_max_ps(xv, vv);
      }
      if (!kTwoPass) continue;
      const float qm = 127.0f / _mm512_reduce_max_ps(xm), qv = 255.0f / _mm512_reduce_max_ps(xv);
      for (long j = 0; j < kBlock; j += 16) {
        const __m512 ym = _mm512_mul_ps(_mm512_load_ps(mb + j), _mm512_set1_ps(qm));
        const __m512 yv = _mm512_mul_ps(_mm512_load_ps(rb + j), _mm512_set1_ps(qv));
        _mm_storeu_si128(reinterpret_cast<__m128i*>(m8 + s + j), _mm512_cvtepi32_epi8(_mm512_cvtps_epi32(ym)));
        _mm_storeu_si128(reinterpret_cast<__m128i*>(v8 + s + j), _mm512_cvtepi32_epi8(_mm512_cvtps_epi32(yv)));
      }
    }
  }
}

char* junk;
constexpr long kJunk = 1L << 30;
void evict() {
#pragma omp parallel for schedule(static)
  for (long j = 0; j < kJunk; j += 64) junk[j] += 1;
}

double seconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

}  // namespace

int main() {
  for (int t = 0; t < kTensors; ++t) {
    P[t] = static_cast<float*>(std::aligned_alloc(64, kPerTensor * 4));
    G[t] = static_cast<float*>(std::aligned_alloc(64, kPerTensor * 4));
    M[t] = static_cast<int8_t*>(std::aligned_alloc(64, kPerTensor));
    V[t] = static_cast<uint8_t*>(std::aligned_alloc(64, kPerTensor));
    for (long j = 0; j < kPerTensor; ++j) {
      P[t][j] = 1.0f;
      G[t][j] = 1e-3f;
      M[t][j] = 1;
      V[t][j] = 1;
    }
  }
  junk = static_cast<char*>(std::aligned_alloc(64, kJunk));
  struct Variant {
    const char* name;
    void (*fn)();
  } variants[] = {{"sqrt+div, prefetch 1024", step<true, 1024>},
                  {"sqrt+div, no prefetch", step<true, 0>},
                  {"no sqrt/div, prefetch 1024", step<false, 1024>},
                  {"one pass (bound), prefetch 1024", step<true, 1024, false>}};
  std::printf("%d threads, %.2fM params in %d tensors, 16 B/param; median of 15\n", omp_get_max_threads(),
              kTensors * kPerTensor / 1e6, kTensors);
  for (int cold = 0; cold < 2; ++cold) {
    for (const Variant& v : variants) {
      std::vector<double> t;
      for (int r = 0; r < 17; ++r) {
        if (cold) evict();
        const double a = seconds();
        v.fn();
        if (r >= 2) t.push_back(seconds() - a);
      }
      std::sort(t.begin(), t.end());
      const double med = t[t.size() / 2];
      std::printf("  %-4s %-34s %6.2f ms  %5.1f GB/s\n", cold ? "cold" : "hot", v.name, med * 1e3,
                  16.0 * kTensors * kPerTensor / med / 1e9);
    }
  }
  return 0;
}
