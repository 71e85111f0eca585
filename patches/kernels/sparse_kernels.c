/* sparse_kernels.c: the sparse kernels of sparse_kernels.h (see there for
 * the API and the two modes).
 *
 * Weight format: one compressed row per filter (output channel), its
 * non-zero weights in k order: val[p] and the tap k[p] = (channel*kh + ky)*kw
 * + kx within the group.  At the first forward with a geometry each tap
 * becomes an offset into the group's padded input (cached until the
 * geometry changes).
 *
 * Padded input: channel ch of the group is Hp rows of stride_x phases of Wq
 * floats: Q[ch][y][ph][xq] = input(y - pad, xq*stride_x + ph - pad), zero
 * outside.  The tap (ch, ky, kx) of output (oy, ox) is then
 * Q[ch][oy*stride_y + ky*dil][(kx*dil) % sx][ox + (kx*dil) / sx]: for
 * consecutive ox, consecutive floats.  With stride 1 both ways, output
 * positions are numbered f = oy*Wq + ox over the padded width ("flat"): a
 * tile of consecutive f reads as many consecutive floats per weight, at the
 * cost of computing (and dropping) the Wq - out_w columns past each row.
 *
 * Kernel: a tile of up to 8 zmm (AVX-512: 128 positions) or 4 ymm (AVX2:
 * 32) of output positions; two filters at a time keep their sums in registers while their non-zero weights, each
 * broadcast, multiply the tap's slice (FAST: FMA; EXACT: multiply, then
 * add, in k order from 0: each output is exactly pjreddie's gemm_nn sum).
 * The weights go channel block by channel block (about 16 KB of the tile's
 * input each, so it stays in L1 while a chunk of 16 filters uses it), the
 * sums kept in a small scratch between blocks: still k order. */
#include "sparse_kernels.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifdef __ASSOCIATIVE_MATH__
#error "sparse_kernels.c must be compiled with -fno-associative-math (and -ffp-contract=off)"
#endif

#if defined(__x86_64__) && defined(__GNUC__) && !defined(DS_SPARSE_NO_SIMD)
#include <immintrin.h>
#define DS_X86 1
#endif

#ifdef _OPENMP
#include <omp.h>
#else
static int omp_get_max_threads(void) { return 1; }
#endif

enum { KIND_CONV = 1, KIND_CONNECTED = 2 };
#define TILE_MAX 128  /* floats per tile, the most of any ISA (8 zmm) */
#define SUB 16       /* filters per pass into a task's scratch */

struct ds_sparse {
    int kind, mode;
    int n, groups, c, kh, kw;  /* connected: n = outputs, c = inputs */
    size_t nweights, nnz;
    int *start;                /* filter i: entries start[i] .. start[i+1]-1 */
    int *tap;                  /* k within the group (connected: input index) */
    float *val;
    /* conv, per geometry */
    int *off;
    long key[6];
    int nblocks;               /* channel blocks of the geometry: filter i's */
    int *bstart;               /* entries in block b start at bstart[i*(nblocks+1) + b] */
    float *buf;
    size_t buf_size;
    /* connected EXACT: four rows per output (lane k%4 of k < inputs&~3),
     * and the 0-3 tail weights of each output */
    int *lstart;
    float *tail;
};

/* ------------------------------------------------------------------ ISA */

static int g_isa = -1;

int ds_sparse_cpu_has(int isa)
{
    if(isa == DS_ISA_GENERIC || isa == DS_ISA_AUTO) return 1;
#ifdef DS_X86
    __builtin_cpu_init();
    if(isa == DS_ISA_AVX2) return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    if(isa == DS_ISA_AVX512) return __builtin_cpu_supports("avx512f");
#endif
    return 0;
}

static int best_isa(void)
{
    if(ds_sparse_cpu_has(DS_ISA_AVX512)) return DS_ISA_AVX512;
    if(ds_sparse_cpu_has(DS_ISA_AVX2)) return DS_ISA_AVX2;
    return DS_ISA_GENERIC;
}

const char *ds_sparse_isa_name(int isa)
{
    switch(isa){
        case DS_ISA_GENERIC: return "generic";
        case DS_ISA_AVX2: return "avx2";
        case DS_ISA_AVX512: return "avx512";
        case DS_ISA_AUTO: return "auto";
    }
    return "?";
}

int ds_sparse_set_isa(int isa)
{
    if(isa < DS_ISA_AUTO || isa > DS_ISA_AVX512 || !ds_sparse_cpu_has(isa)) return -1;
    g_isa = isa == DS_ISA_AUTO ? best_isa() : isa;
    return g_isa;
}

int ds_sparse_isa(void)
{
    if(g_isa < 0){
        const char *e = getenv("DS_SPARSE_ISA");
        int want = DS_ISA_AUTO;
        if(e && *e){
            if(!strcmp(e, "avx512")) want = DS_ISA_AVX512;
            else if(!strcmp(e, "avx2")) want = DS_ISA_AVX2;
            else if(!strcmp(e, "generic")) want = DS_ISA_GENERIC;
            else if(strcmp(e, "auto")) fprintf(stderr, "DS_SPARSE_ISA=%s: expected avx512, avx2, generic or auto; using auto\n", e);
        }
        if(ds_sparse_set_isa(want) < 0){
            fprintf(stderr, "DS_SPARSE_ISA=%s: this CPU lacks it; using %s\n", e, ds_sparse_isa_name(best_isa()));
            ds_sparse_set_isa(DS_ISA_AUTO);
        }
    }
    return g_isa;
}

/* --------------------------------------------------------------- build */

void ds_sparse_free(ds_sparse *s)
{
    if(!s) return;
    free(s->start);
    free(s->tap);
    free(s->val);
    free(s->off);
    free(s->bstart);
    free(s->buf);
    free(s->lstart);
    free(s->tail);
    free(s);
}

size_t ds_sparse_nonzero(const ds_sparse *s) { return s ? s->nnz : 0; }
size_t ds_sparse_weights(const ds_sparse *s) { return s ? s->nweights : 0; }
int ds_sparse_mode(const ds_sparse *s) { return s ? s->mode : -1; }

int ds_sparse_set_mode(ds_sparse *s, int mode)
{
    if(!s || (mode != DS_SPARSE_EXACT && mode != DS_SPARSE_FAST)) return -1;
    s->mode = mode;
    return 0;
}

/* CSR of rows x cols weights (row-major), in column order. */
static ds_sparse *build_rows(const float *w, int rows, int cols, int mode)
{
    ds_sparse *s = calloc(1, sizeof(*s));
    size_t i, nnz = 0, total = (size_t)rows*cols, p = 0;
    int r, k;
    if(!s) return 0;
    for(i = 0; i < total; ++i) nnz += w[i] != 0;
    s->mode = mode;
    s->nweights = total;
    s->nnz = nnz;
    s->start = malloc((rows + 1)*sizeof(int));
    s->tap = malloc((nnz ? nnz : 1)*sizeof(int));
    s->val = malloc((nnz ? nnz : 1)*sizeof(float));
    if(!s->start || !s->tap || !s->val || nnz > INT32_MAX){
        ds_sparse_free(s);
        return 0;
    }
    for(r = 0; r < rows; ++r){
        const float *wr = w + (size_t)r*cols;
        s->start[r] = (int)p;
        for(k = 0; k < cols; ++k){
            if(wr[k] == 0) continue;
            s->tap[p] = k;
            s->val[p++] = wr[k];
        }
    }
    s->start[rows] = (int)p;
    return s;
}

ds_sparse *ds_sparse_build_conv(const float *weights, int n, int groups, int c, int kh, int kw, int mode)
{
    ds_sparse *s;
    if(!weights || n <= 0 || groups <= 0 || c <= 0 || kh <= 0 || kw <= 0 || n % groups || c % groups) return 0;
    if(mode != DS_SPARSE_EXACT && mode != DS_SPARSE_FAST) return 0;
    s = build_rows(weights, n, c/groups*kh*kw, mode);
    if(!s) return 0;
    s->kind = KIND_CONV;
    s->n = n;
    s->groups = groups;
    s->c = c;
    s->kh = kh;
    s->kw = kw;
    return s;
}

ds_sparse *ds_sparse_build_connected(const float *weights, int outputs, int inputs, int mode)
{
    ds_sparse *s;
    int k4 = inputs & ~3, j, lane, k;
    size_t p = 0;
    if(!weights || outputs <= 0 || inputs <= 0) return 0;
    if(mode != DS_SPARSE_EXACT && mode != DS_SPARSE_FAST) return 0;
    s = build_rows(weights, outputs, inputs, mode);
    if(!s) return 0;
    s->kind = KIND_CONNECTED;
    s->n = outputs;
    s->c = inputs;
    s->groups = 1;
    {
        /* the same entries regrouped into four lanes per output (EXACT's
         * order; FAST sums an output's entries in any order) */
        s->lstart = malloc((4*(size_t)outputs + 1)*sizeof(int));
        s->tail = calloc(3*(size_t)outputs, sizeof(float));
        if(!s->lstart || !s->tail){
            ds_sparse_free(s);
            return 0;
        }
        for(j = 0; j < outputs; ++j){
            const float *w = weights + (size_t)j*inputs;
            for(lane = 0; lane < 4; ++lane){
                s->lstart[4*j + lane] = (int)p;
                for(k = lane; k < k4; k += 4){
                    if(w[k] == 0) continue;
                    s->tap[p] = k;
                    s->val[p++] = w[k];
                }
            }
            for(k = k4; k < inputs; ++k) s->tail[3*j + k - k4] = w[k];
        }
        s->lstart[4*(size_t)outputs] = (int)p;
    }
    return s;
}

/* ------------------------------------------------------------- kernels */

/* Which entries of each filter a kernel call adds: filter o's are
 * first[o*stride] .. last[o*stride]-1 (one channel block of them); zero:
 * the sums start from 0, else from tmp (the earlier blocks'). */
struct rows {
    const int *first, *last;
    int stride, zero;
};

/* A kernel computes, for filters [o0, o1) of the group, tmp[(o-o0)*TILE_MAX
 * + j] (+)= sum_p val[p] * in[off[p] + j] for j < len (later lanes: junk). */
typedef void (*tile_fn)(int exact, const struct rows *R, const int *off, const float *val, int o0, int o1,
        const float *in, int len, float *tmp);

static void tile_generic(int exact, const struct rows *R, const int *off, const float *val, int o0, int o1,
        const float *in, int len, float *tmp)
{
    int o, p, j;
    (void)exact;  /* multiply then add, in k order, either way */
    for(o = o0; o < o1; ++o){
        float *t = tmp + (size_t)(o - o0)*TILE_MAX;
        if(R->zero) for(j = 0; j < len; ++j) t[j] = 0;
        for(p = R->first[o*R->stride]; p < R->last[o*R->stride]; ++p){
            const float *x = in + off[p];
            float w = val[p];
            for(j = 0; j < len; ++j) t[j] += w*x[j];
        }
    }
}

#ifdef DS_X86
/* The vector kernels, one body per ISA: VT the vector type, VL its lanes,
 * NV (1-4) vectors per filter, the last one masked to len.  STEP adds one
 * weight's products to a filter's sums. */
#define DS_TILE_BODY(VT, VL, NVMAX, LOAD, ZERO, STORE) \
    int o, v; \
    int rest = len - (NV - 1)*VL; /* lanes of the last vector */ \
    MASK_DECL; \
    for(o = o0; o + 2 <= o1; o += 2){ \
        VT a[NVMAX], c[NVMAX]; \
        int p = R->first[o*R->stride], pe = R->last[o*R->stride]; \
        int q = R->first[(o+1)*R->stride], qe = R->last[(o+1)*R->stride]; \
        int both = pe - p < qe - q ? pe - p : qe - q; \
        float *t = tmp + (size_t)(o - o0)*TILE_MAX; \
        for(v = 0; v < NV; ++v){ \
            a[v] = R->zero ? ZERO : LOAD(t + v*VL); \
            c[v] = R->zero ? ZERO : LOAD(t + TILE_MAX + v*VL); \
        } \
        for(; both > 0; --both, ++p, ++q){ \
            STEP(a, p); \
            STEP(c, q); \
        } \
        for(; p < pe; ++p) STEP(a, p); \
        for(; q < qe; ++q) STEP(c, q); \
        for(v = 0; v < NV; ++v){ \
            STORE(t + v*VL, a[v]); \
            STORE(t + TILE_MAX + v*VL, c[v]); \
        } \
    } \
    for(; o < o1; ++o){ \
        VT a[NVMAX]; \
        float *t = tmp + (size_t)(o - o0)*TILE_MAX; \
        int p; \
        for(v = 0; v < NV; ++v) a[v] = R->zero ? ZERO : LOAD(t + v*VL); \
        for(p = R->first[o*R->stride]; p < R->last[o*R->stride]; ++p) STEP(a, p); \
        for(v = 0; v < NV; ++v) STORE(t + v*VL, a[v]); \
    } \
    (void)rest;

#define DS_LD(q, x) (q < NV - 1 || full ? LOADV(x + q*VLEN) : MLOADV(x + q*VLEN))
#define STEP(acc, p) do { \
        const float *x_ = in + off[p]; \
        VTYPE w_ = SET1V(val[p]); \
        int u_; \
        for(u_ = 0; u_ < NV; ++u_){ \
            acc[u_] = exact ? ADDV(acc[u_], MULV(w_, DS_LD(u_, x_))) : FMAV(w_, DS_LD(u_, x_), acc[u_]); \
        } \
    } while(0)

/* AVX-512F */
#define VTYPE __m512
#define VLEN 16
#define LOADV(x) _mm512_loadu_ps(x)
#define MLOADV(x) _mm512_maskz_loadu_ps(mask, x)
#define SET1V(v) _mm512_set1_ps(v)
#define FMAV(a, b, c) _mm512_fmadd_ps(a, b, c)
#define ADDV(a, b) _mm512_add_ps(a, b)
#define MULV(a, b) _mm512_mul_ps(a, b)
#define STOREV(p, v) _mm512_storeu_ps(p, v)
#define MASK_DECL __mmask16 mask = (__mmask16)(rest >= 16 ? 0xffff : (1u << rest) - 1)
__attribute__((target("avx512f"), always_inline))
static inline void tile512_body(const int NV, const int full, int exact, const struct rows *R, const int *off,
        const float *val, int o0, int o1, const float *in, int len, float *tmp)
{
    DS_TILE_BODY(__m512, 16, 8, LOADV, _mm512_setzero_ps(), STOREV)
}
#undef MASK_DECL
#undef VTYPE
#undef VLEN
#undef LOADV
#undef MLOADV
#undef SET1V
#undef FMAV
#undef ADDV
#undef MULV
#undef STOREV

/* AVX2 + FMA */
#define VTYPE __m256
#define VLEN 8
#define LOADV(x) _mm256_loadu_ps(x)
#define MLOADV(x) _mm256_maskload_ps(x, mask)
#define SET1V(v) _mm256_set1_ps(v)
#define FMAV(a, b, c) _mm256_fmadd_ps(a, b, c)
#define ADDV(a, b) _mm256_add_ps(a, b)
#define MULV(a, b) _mm256_mul_ps(a, b)
#define STOREV(p, v) _mm256_storeu_ps(p, v)
#define MASK_DECL __m256i mask = _mm256_cmpgt_epi32(_mm256_set1_epi32(rest), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7))
__attribute__((target("avx2,fma"), always_inline))
static inline void tile256_body(const int NV, const int full, int exact, const struct rows *R, const int *off,
        const float *val, int o0, int o1, const float *in, int len, float *tmp)
{
    DS_TILE_BODY(__m256, 8, 4, LOADV, _mm256_setzero_ps(), STOREV)
}
#undef MASK_DECL
#undef VTYPE
#undef VLEN
#undef LOADV
#undef MLOADV
#undef SET1V
#undef FMAV
#undef ADDV
#undef MULV
#undef STOREV
#undef STEP
#undef DS_LD

/* Each (vectors, full, exact) its own compiled body, so the sums stay in
 * registers and unused vectors vanish. */
#define DS_CASE(BODY, N, EX) \
    case N: { if(full) BODY(N, 1, EX, R, off, val, o0, o1, in, len, tmp); \
              else BODY(N, 0, EX, R, off, val, o0, o1, in, len, tmp); } break
#define DS_DISPATCH4(BODY, EX) DS_CASE(BODY, 1, EX); DS_CASE(BODY, 2, EX); DS_CASE(BODY, 3, EX); DS_CASE(BODY, 4, EX)
#define DS_DISPATCH8(BODY, EX) DS_DISPATCH4(BODY, EX); DS_CASE(BODY, 5, EX); DS_CASE(BODY, 6, EX); \
    DS_CASE(BODY, 7, EX); DS_CASE(BODY, 8, EX)

__attribute__((target("avx512f")))
static void tile_avx512(int exact, const struct rows *R, const int *off, const float *val, int o0, int o1,
        const float *in, int len, float *tmp)
{
    int nv = (len + 15)/16, full = len == nv*16;
    if(exact){
        switch(nv){ DS_DISPATCH8(tile512_body, 1); }
    } else {
        switch(nv){ DS_DISPATCH8(tile512_body, 0); }
    }
}

__attribute__((target("avx2,fma")))
static void tile_avx2(int exact, const struct rows *R, const int *off, const float *val, int o0, int o1,
        const float *in, int len, float *tmp)
{
    int nv = (len + 7)/8, full = len == nv*8;
    if(exact){
        switch(nv){ DS_DISPATCH4(tile256_body, 1); }
    } else {
        switch(nv){ DS_DISPATCH4(tile256_body, 0); }
    }
}
#undef DS_CASE
#undef DS_DISPATCH4
#undef DS_DISPATCH8
#endif

/* The ISA's kernel and its tile width (floats). */
static tile_fn kernel_for(int isa, int *tile)
{
#ifdef DS_X86
    if(isa == DS_ISA_AVX512){ *tile = 128; return tile_avx512; }
    if(isa == DS_ISA_AVX2){ *tile = 32; return tile_avx2; }
#endif
    (void)isa;
    *tile = 32;
    return tile_generic;
}

/* ------------------------------------------------------------ epilogue */

static inline float finish(float v, int o, const ds_epilogue *epi)
{
    if(!epi) return v;
    if(epi->scale) v *= epi->scale[o];
    if(epi->bias) v += epi->bias[o];
    if(epi->act == DS_ACT_LEAKY) return v > 0 ? v : .1f*v;
    if(epi->act == DS_ACT_RELU) return v > 0 ? v : 0;
    return v;
}

/* dst[j] = finish(src[j], o, epi) for j < len, in loops the compiler
 * vectorises. */
static void store_run(float *restrict dst, const float *restrict src, int len, int o, const ds_epilogue *epi)
{
    float a = epi && epi->scale ? epi->scale[o] : 1, b = epi && epi->bias ? epi->bias[o] : 0;
    int act = epi ? epi->act : DS_ACT_LINEAR, j;
    if(!epi){
        memcpy(dst, src, len*sizeof(float));
    } else if(act == DS_ACT_LEAKY){
        for(j = 0; j < len; ++j){
            float v = src[j]*a + b;
            dst[j] = v > 0 ? v : .1f*v;
        }
    } else if(act == DS_ACT_RELU){
        for(j = 0; j < len; ++j){
            float v = src[j]*a + b;
            dst[j] = v > 0 ? v : 0;
        }
    } else {
        for(j = 0; j < len; ++j) dst[j] = src[j]*a + b;
    }
}

/* --------------------------------------------------------- convolution */

/* How one geometry lays out the padded input. */
struct layout {
    int direct;      /* 1x1, stride 1, no pad: read the input itself */
    int flat;        /* stride 1 both ways: positions f = oy*Wq + ox */
    int sx, sy, d, Hp, Wq;
    long row;        /* floats per padded input row: sx*Wq */
    long plane;      /* floats per padded channel: Hp*row */
    long positions;  /* flat: (out_h - 1)*Wq + out_w; else out_w per row */
};

static void plan(const ds_conv_geom *g, struct layout *L)
{
    int sx = g->stride_x, sy = g->stride_y, d = g->dilation;
    long Wp = g->w + 2L*g->pad, Hp = g->h + 2L*g->pad;
    long needw = (long)(g->out_w - 1)*sx + (long)(g->kw - 1)*d + 1;
    long needh = (long)(g->out_h - 1)*sy + (long)(g->kh - 1)*d + 1;
    if(needw > Wp) Wp = needw;
    if(needh > Hp) Hp = needh;
    L->sx = sx;
    L->sy = sy;
    L->d = d;
    L->direct = g->kh == 1 && g->kw == 1 && g->pad == 0 && sx == 1 && sy == 1
        && g->out_h == g->h && g->out_w == g->w;
    L->flat = sx == 1 && sy == 1;
    L->Wq = L->direct ? g->w : (int)((Wp + sx - 1)/sx);
    L->Hp = L->direct ? g->h : (int)Hp;
    L->row = (long)sx*L->Wq;
    L->plane = L->Hp*L->row;
    L->positions = L->flat ? (long)(g->out_h - 1)*L->Wq + g->out_w : g->out_w;
}

/* Q for all channels of one image (see the top of the file). */
static void pad_input(const ds_conv_geom *g, const struct layout *L, const float *im, float *q)
{
    int ch;
    #pragma omp parallel for schedule(static)
    for(ch = 0; ch < g->c; ++ch){
        int y, ph, xq;
        for(y = 0; y < L->Hp; ++y){
            float *row = q + (size_t)ch*L->plane + (size_t)y*L->row;
            int iy = y - g->pad;
            const float *src = im + ((size_t)ch*g->h + iy)*g->w;
            if(iy < 0 || iy >= g->h){
                memset(row, 0, L->row*sizeof(float));
                continue;
            }
            if(L->sx == 1){
                int right = L->Wq - g->pad - g->w;
                memset(row, 0, g->pad*sizeof(float));
                memcpy(row + g->pad, src, g->w*sizeof(float));
                if(right > 0) memset(row + g->pad + g->w, 0, right*sizeof(float));
                continue;
            }
            for(ph = 0; ph < L->sx; ++ph){
                float *r = row + (size_t)ph*L->Wq;
                for(xq = 0; xq < L->Wq; ++xq){
                    int x = xq*L->sx + ph - g->pad;
                    r[xq] = x >= 0 && x < g->w ? src[x] : 0;
                }
            }
        }
    }
}

/* Channels per block: a tile's slices of a block's channels (its input
 * rows under the filters' reach) take about BLOCK_BYTES, so they stay in L1
 * while every filter of a task's chunk adds the block's weights. */
#ifndef MIN_BLOCK_NNZ
#define MIN_BLOCK_NNZ 32
#endif
#ifndef BLOCK_BYTES
#define BLOCK_BYTES 16384
#endif

static int block_channels(const ds_sparse *s, const struct layout *L, int tile)
{
    long reach = L->flat ? tile + (long)(s->kh - 1)*L->d*L->row + (long)(s->kw - 1)*L->d
        : (long)s->kh*L->row;
    long cb = BLOCK_BYTES/(4*reach);
    int cg = s->c/s->groups;
    /* but blocks of at least MIN_BLOCK_NNZ weights per filter on average:
     * each block costs a reload and a store of the filters' sums */
    double per_channel = (double)s->nnz/((double)s->n*cg);
    if(per_channel > 0 && cb*per_channel < MIN_BLOCK_NNZ) cb = (long)(MIN_BLOCK_NNZ/per_channel) + 1;
    return cb < 1 ? 1 : cb > cg ? cg : (int)cb;
}

/* The taps' offsets into Q for this layout, and each filter's channel
 * blocks, cached on s. */
static int offsets(ds_sparse *s, const struct layout *L, int tile)
{
    int cb = block_channels(s, L, tile);
    long key[6] = {L->plane, L->row, L->Wq, L->sx, L->d, cb};
    int cg = s->c/s->groups, per = s->kh*s->kw, i, b;
    size_t p;
    if(s->off && !memcmp(key, s->key, sizeof(key))) return 0;
    if(!s->off) s->off = malloc((s->nnz ? s->nnz : 1)*sizeof(int));
    if(!s->off) return -1;
    s->nblocks = (cg + cb - 1)/cb;
    free(s->bstart);
    s->bstart = malloc((size_t)s->n*(s->nblocks + 1)*sizeof(int));
    if(!s->bstart) return -1;
    for(i = 0; i < s->n; ++i){
        int *bs = s->bstart + (size_t)i*(s->nblocks + 1), q = s->start[i];
        for(b = 0; b < s->nblocks; ++b){
            while(q < s->start[i+1] && s->tap[q] < b*cb*per) ++q;
            bs[b] = q;
        }
        bs[s->nblocks] = s->start[i+1];
    }
    if((long)s->c/s->groups*L->plane > INT32_MAX) return -1;
    for(p = 0; p < s->nnz; ++p){
        int k = s->tap[p];
        int kx = k % s->kw, ky = k / s->kw % s->kh, ch = k / s->kw / s->kh;
        int dx = kx*L->d;
        s->off[p] = (int)(ch*L->plane + (long)ky*L->d*L->row + (long)(dx % L->sx)*L->Wq + dx / L->sx);
    }
    memcpy(s->key, key, sizeof(key));
    return 0;
}

int ds_sparse_conv_forward(ds_sparse *s, const ds_conv_geom *g, const float *input, float *output,
        const ds_epilogue *epi)
{
    struct layout L;
    int isa = ds_sparse_isa(), tile, b;
    tile_fn kernel = kernel_for(isa, &tile);
    int m, cg, out_hw, tiles_per_row, rows, ntiles, chunk, chunks, threads = omp_get_max_threads();
    long tasks;
    if(!s || !g || s->kind != KIND_CONV || g->c != s->c || g->n != s->n || g->groups != s->groups
            || g->kh != s->kh || g->kw != s->kw || g->stride_x < 1 || g->stride_y < 1 || g->dilation < 1
            || g->pad < 0 || g->out_h < 1 || g->out_w < 1 || g->batch < 1) return -1;
    if(epi && s->mode == DS_SPARSE_EXACT) return -1;
    plan(g, &L);
    if(offsets(s, &L, tile)) return -1;
    if(!L.direct){
        size_t need = (size_t)g->c*L.plane;
        if(s->buf_size < need){
            free(s->buf);
            s->buf = malloc(need*sizeof(float));
            s->buf_size = s->buf ? need : 0;
            if(!s->buf) return -1;
        }
    }
    m = g->n/g->groups;
    cg = g->c/g->groups;
    out_hw = g->out_h*g->out_w;
    tiles_per_row = (int)((L.positions + tile - 1)/tile);
    rows = L.flat ? 1 : g->out_h;
    ntiles = rows*tiles_per_row;
    /* enough tasks for the threads: split the filters when tiles are few */
    chunks = 1;
    if((long)g->groups*ntiles < 4L*threads && threads > 1){
        chunks = (int)((4L*threads + (long)g->groups*ntiles - 1)/((long)g->groups*ntiles));
        if(chunks > (m + 1)/2) chunks = (m + 1)/2;
        if(chunks < 1) chunks = 1;
    }
    chunk = (m + chunks - 1)/chunks;
    chunk += chunk & 1;
    chunks = (m + chunk - 1)/chunk;
    tasks = (long)g->groups*ntiles*chunks;
    for(b = 0; b < g->batch; ++b){
        const float *im = input + (size_t)b*g->c*g->h*g->w;
        const float *q = im;
        float *out = output + (size_t)b*g->n*out_hw;
        long t;
        if(!L.direct){
            pad_input(g, &L, im, s->buf);
            q = s->buf;
        }
        #pragma omp parallel for schedule(dynamic)
        for(t = 0; t < tasks; ++t){
            float tmp[SUB*TILE_MAX];
            int grp = (int)(t/((long)ntiles*chunks));
            int rest = (int)(t%((long)ntiles*chunks));
            int ti = rest/chunks, ck = rest%chunks;
            int row = ti/tiles_per_row, x0 = ti%tiles_per_row*tile;
            int len = (int)(L.positions - x0 < tile ? L.positions - x0 : tile);
            int f0 = grp*m + ck*chunk, f1 = f0 + chunk < (grp + 1)*m ? f0 + chunk : (grp + 1)*m;
            const float *in = q + (size_t)grp*cg*L.plane
                + (L.flat ? (size_t)x0 : (size_t)row*L.sy*L.row + x0);
            int o0;
            for(o0 = f0; o0 < f1; o0 += SUB){
                int o1 = o0 + SUB < f1 ? o0 + SUB : f1, o, j, kb;
                /* channel block by channel block (in k order), all the
                 * chunk's filters each */
                for(kb = 0; kb < s->nblocks; ++kb){
                    struct rows R;
                    R.first = s->bstart + kb;
                    R.last = s->bstart + kb + 1;
                    R.stride = s->nblocks + 1;
                    R.zero = kb == 0;
                    kernel(s->mode == DS_SPARSE_EXACT, &R, s->off, s->val, o0, o1, in, len, tmp);
                }
                for(o = o0; o < o1; ++o){
                    const float *tv = tmp + (size_t)(o - o0)*TILE_MAX;
                    float *dst = out + (size_t)o*out_hw;
                    if(!L.flat || L.Wq == g->out_w){
                        store_run(dst + (L.flat ? x0 : row*g->out_w + x0), tv, len, o, epi);
                    } else {
                        /* runs of the valid columns of each padded row */
                        int oy = x0/L.Wq, ox = x0%L.Wq;
                        for(j = 0; j < len;){
                            int run = g->out_w - ox, skip;
                            if(run > len - j) run = len - j;
                            if(run > 0) store_run(dst + oy*g->out_w + ox, tv + j, run, o, epi);
                            else run = 0;
                            skip = L.Wq - ox < len - j ? L.Wq - ox : len - j;
                            j += skip;
                            ox += skip;
                            if(ox == L.Wq){ ox = 0; ++oy; }
                        }
                    }
                }
            }
        }
    }
    return 0;
}

/* ----------------------------------------------------------- connected */

/* gcc -Ofast (SSE2) turns pjreddie's gemm_nt dot product into four lane
 * sums v[l] over k%4 == l, k < inputs&~3, folds them as h0 = v0+v2, h1 =
 * v1+v3, and adds the 0-3 tail products as below; repeating that with the
 * zero products left out is bit-identical. */
static float connected_total(const float v[4], const float *x, const float *w, int tail)
{
    float h0 = v[0] + v[2];
    float h1 = v[1] + v[3];
    float t;
    if(tail == 0) return h0 + h1;
    if(tail == 1) return (h0 + h1) + w[0]*x[0];
    t = (h0 + w[0]*x[0]) + (h1 + w[1]*x[1]);
    return tail == 3 ? t + w[2]*x[2] : t;
}

int ds_sparse_connected_forward(ds_sparse *s, int batch, const float *input, float *output, int accumulate,
        const ds_epilogue *epi)
{
    int i, j;
    if(!s || s->kind != KIND_CONNECTED || batch < 1) return -1;
    if(epi && (s->mode == DS_SPARSE_EXACT || accumulate)) return -1;
    for(i = 0; i < batch; ++i){
        const float *x = input + (size_t)i*s->c;
        float *y = output + (size_t)i*s->n;
        if(s->mode == DS_SPARSE_EXACT){
            int k4 = s->c & ~3;
            #pragma omp parallel for schedule(static)
            for(j = 0; j < s->n; ++j){
                float v[4];
                int lane, p;
                for(lane = 0; lane < 4; ++lane){
                    float sum = 0;
                    for(p = s->lstart[4*j + lane]; p < s->lstart[4*j + lane + 1]; ++p) sum += x[s->tap[p]]*s->val[p];
                    v[lane] = sum;
                }
                y[j] = connected_total(v, x + k4, s->tail + 3*(size_t)j, s->c - k4) + (accumulate ? y[j] : 0.f);
            }
        } else {
            #pragma omp parallel for schedule(static)
            for(j = 0; j < s->n; ++j){
                /* the lanes' entries (k < inputs&~3), then the 0-3 tail ones */
                float a0 = 0, a1 = 0, a2 = 0, a3 = 0;
                int p = s->lstart[4*j], pe = s->lstart[4*j + 4], k4 = s->c & ~3, t;
                for(; p + 4 <= pe; p += 4){
                    a0 += x[s->tap[p]]*s->val[p];
                    a1 += x[s->tap[p+1]]*s->val[p+1];
                    a2 += x[s->tap[p+2]]*s->val[p+2];
                    a3 += x[s->tap[p+3]]*s->val[p+3];
                }
                for(; p < pe; ++p) a0 += x[s->tap[p]]*s->val[p];
                for(t = 0; t < s->c - k4; ++t) a1 += s->tail[3*(size_t)j + t]*x[k4 + t];
                a0 = (a0 + a1) + (a2 + a3);
                y[j] = accumulate ? y[j] + a0 : finish(a0, j, epi);
            }
        }
    }
    return 0;
}
