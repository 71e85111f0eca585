/* sparse_kernels.h: darknet-sparse's fork-neutral sparse CPU kernels.
 *
 * Sparse weights (a compressed copy of a layer's non-zero weights) times
 * dense activations, for convolutional and connected layers, shared by the
 * sparse forward passes of both Darknet forks (pjreddie's, patches/0010, and
 * AlexeyAB's).  Depends only on libc and <immintrin.h>: never on darknet.h.
 * The build copies patches/kernels/sparse_kernels.[ch] into the tree's src/.
 *
 * Two modes, chosen when the weight format is built (ds_sparse_set_mode
 * switches a built one: both share it):
 *   DS_SPARSE_EXACT  every output is pjreddie's stock sum, bit for bit: it
 *                    starts at 0 and adds each product in upstream's k order
 *                    (k = (channel*kh + ky)*kw + kx within the group), each
 *                    multiply and add rounded once, the zero weights left
 *                    out; connected layers repeat the four-lane sums gcc
 *                    -Ofast makes of pjreddie's gemm_nt.  No FMA: compile
 *                    sparse_kernels.c with -fno-associative-math
 *                    -ffp-contract=off (it refuses -fassociative-math).
 *   DS_SPARSE_FAST   FMA and any summation order (results within float
 *                    rounding of EXACT, not equal): vectorised along output
 *                    positions with each non-zero weight broadcast (Elsen et
 *                    al., "Fast Sparse ConvNets", CVPR 2020), several output
 *                    channels in flight at once (register blocking).
 *
 * Convolutions read a zero-padded (and, for stride_x > 1, column-phase
 * split) copy of each group's input, so every weight is one contiguous
 * slice: no im2col, any kernel size, stride_x != stride_y, dilation,
 * groups and depthwise; 1x1 stride-1 unpadded layers read the input itself.
 *
 * Instruction set: chosen at run time from the CPU (AVX-512F, else
 * AVX2+FMA, else plain C); the vector paths are compiled with function
 * target attributes, so the file builds with the forks' default flags.
 * Force one with the environment variable DS_SPARSE_ISA=avx512|avx2|generic
 * (read on first use) or ds_sparse_set_isa().  Compiled with -fopenmp, the
 * kernels share output channels and spatial tiles among threads.
 *
 * A ds_sparse object is not safe for concurrent forwards from two threads
 * (it keeps a scratch buffer and per-geometry offsets); distinct objects are.
 */
#ifndef DS_SPARSE_KERNELS_H
#define DS_SPARSE_KERNELS_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

enum { DS_SPARSE_EXACT = 0, DS_SPARSE_FAST = 1 };
enum { DS_ISA_AUTO = 0, DS_ISA_GENERIC = 1, DS_ISA_AVX2 = 2, DS_ISA_AVX512 = 3 };
/* Activations the FAST epilogue can apply: linear, leaky (0.1x below 0,
 * Darknet's), relu. */
enum { DS_ACT_LINEAR = 0, DS_ACT_LEAKY = 1, DS_ACT_RELU = 2 };

typedef struct ds_sparse ds_sparse;

/* A convolution's geometry.  Input: batch images, each c planes of h*w
 * floats.  Output: batch images, each n planes of out_h*out_w floats
 * (Darknet's layout).  Output pixel (oy, ox) of a filter reads input
 * (oy*stride_y + ky*dilation - pad, ox*stride_x + kx*dilation - pad), zero
 * outside the image.  c and n divisible by groups; dilation >= 1. */
typedef struct ds_conv_geom {
    int batch, c, h, w;
    int n, groups;
    int kh, kw;
    int stride_x, stride_y, dilation, pad;
    int out_h, out_w;
} ds_conv_geom;

/* What FAST may fuse into the store of each output channel o:
 * out = act(sum*scale[o] + bias[o]) (scale, bias NULL: 1, 0).  Batch norm
 * at inference folds into it: scale = gamma/(sqrt(var) + eps), bias = beta -
 * mean*scale.  EXACT takes no epilogue (pass NULL): the caller then runs
 * the fork's own batch norm, bias and activation, as stock does. */
typedef struct ds_epilogue {
    const float *scale;
    const float *bias;
    int act;
} ds_epilogue;

/* Build the weight format once (at load or the first forward after the
 * weights changed), never per forward.  Convolution: n filters in Darknet's
 * order, filter i holding c/groups*kh*kw weights (channel, ky, kx
 * row-major).  Connected: outputs rows of inputs weights.  mode:
 * DS_SPARSE_EXACT or DS_SPARSE_FAST.  NULL on bad arguments or no memory. */
ds_sparse *ds_sparse_build_conv(const float *weights, int n, int groups, int c, int kh, int kw, int mode);
ds_sparse *ds_sparse_build_connected(const float *weights, int outputs, int inputs, int mode);
void ds_sparse_free(ds_sparse *s);
size_t ds_sparse_nonzero(const ds_sparse *s);   /* non-zero weights kept */
size_t ds_sparse_weights(const ds_sparse *s);   /* weights in the layer */
int ds_sparse_mode(const ds_sparse *s);
/* Switch the mode of a built format (the two share it): 0, or -1 on a bad
 * mode.  E.g. FAST at inference, EXACT in training forwards. */
int ds_sparse_set_mode(ds_sparse *s, int mode);

/* output (batch*n*out_h*out_w floats) is written, not added to: out = the
 * convolution, then the FAST epilogue if epi is non-NULL (what Darknet's
 * forward has after fill 0 + GEMM, before batch norm/bias/activation, when
 * epi is NULL).  Returns 0, or -1 when the geometry does not fit the build
 * (c, n, groups, kh, kw) or an epilogue is passed in EXACT mode. */
int ds_sparse_conv_forward(ds_sparse *s, const ds_conv_geom *g, const float *input, float *output,
        const ds_epilogue *epi);

/* input batch x inputs, output batch x outputs.  accumulate=1: output +=
 * the product (EXACT: out = sum + out, pjreddie's gemm_nt with beta 1);
 * accumulate=0: output = the product.  epi as above (FAST, accumulate=0
 * only).  Returns 0, or -1 on a mismatch. */
int ds_sparse_connected_forward(ds_sparse *s, int batch, const float *input, float *output, int accumulate,
        const ds_epilogue *epi);

/* The instruction set in use: DS_ISA_GENERIC, DS_ISA_AVX2 or DS_ISA_AVX512
 * (after DS_SPARSE_ISA and ds_sparse_set_isa). */
int ds_sparse_isa(void);
/* Force one (DS_ISA_AUTO: the CPU's best again).  Returns the ISA in use
 * afterwards, or -1 (and changes nothing) when this CPU lacks it. */
int ds_sparse_set_isa(int isa);
int ds_sparse_cpu_has(int isa);
const char *ds_sparse_isa_name(int isa);  /* "generic", "avx2", "avx512", "auto" */

#ifdef __cplusplus
}
#endif

#endif
