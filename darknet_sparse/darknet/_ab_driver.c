/* A timing driver for one AlexeyAB Darknet build (the fork's counterpart of
 * _forward_driver.c), compiled by darknet_sparse/darknet/ab_driver.py against
 * the build's include/darknet.h and src/ headers and linked with its objects
 * (the fork's libdarknet.so exports neither parse_network_cfg_custom nor its
 * fuse_conv_batchnorm in a form this needs):
 *
 *   ab_driver time CFG WEIGHTS N         batch-1 inference, batch norm fused as
 *       `detector test` does: one warm-up forward, then N timed forwards of
 *       one fixed input, a line `ms T` each
 *   ab_driver freeze-time CFG WEIGHTS N  (patched build only) N timings (`ms T`
 *       lines) of the prune phase's hook over every layer of a training net
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "darknet.h"
#include "parser.h"
#include "network.h"
#ifdef DS_PRUNE_THRESHOLD
void ds_prune_freeze(layer *l);  /* the patched build's prune hook (src/ds_prune.h) */
#endif

static int usage(void)
{
    fprintf(stderr, "usage: ab_driver time CFG WEIGHTS N | freeze-time CFG WEIGHTS N\n");
    return 2;
}

/* A fixed generator, so the input is the same for every build. */
static float next_uniform(unsigned long long *state)
{
    *state = *state * 6364136223846793005ULL + 1442695040888963407ULL;
    return (float)((*state >> 40) & 0xffffff) / 16777216.0f;
}

static double now_ms(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e3 + t.tv_nsec / 1e6;
}

static int timing(char *cfg, char *weights, int n)
{
    network net = parse_network_cfg_custom(cfg, 1, 1);
    unsigned long long seed = 3;
    int i, size;
    load_weights(&net, weights);
    fuse_conv_batchnorm(net);
    size = net.w * net.h * net.c;
    float *x = calloc(size, sizeof(float));
    if (!x) return 1;
    for (i = 0; i < size; ++i) x[i] = next_uniform(&seed);
    network_predict(net, x);
    for (i = 0; i < n; ++i) {
        double start = now_ms();
        network_predict(net, x);
        printf("ms %.3f\n", now_ms() - start);
    }
    free(x);
    return 0;
}

#ifdef DS_PRUNE_THRESHOLD
static int freeze_timing(char *cfg, char *weights, int n)
{
    network net = parse_network_cfg(cfg);  /* training allocations: weight_updates */
    int i, k;
    load_weights(&net, weights);
    for (k = 0; k < n; ++k) {
        double start = now_ms();
        for (i = 0; i < net.n; ++i) {
            layer l = net.layers[i];
            if (l.train && l.update) ds_prune_freeze(&l);  /* as update_network calls it */
        }
        printf("ms %.3f\n", now_ms() - start);
    }
    return 0;
}
#endif

int main(int argc, char **argv)
{
    if (argc != 5) return usage();
    if (!strcmp(argv[1], "time")) return timing(argv[2], argv[3], atoi(argv[4]));
#ifdef DS_PRUNE_THRESHOLD
    if (!strcmp(argv[1], "freeze-time")) return freeze_timing(argv[2], argv[3], atoi(argv[4]));
#endif
    return usage();
}
