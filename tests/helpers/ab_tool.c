// The tests' tool for AlexeyAB's Darknet, compiled against one build's
// include/darknet.h and src/ headers and linked with its objects (the fork's
// libdarknet.so exports neither parse_network_cfg nor save_weights).
//
//   ab_tool init CFG OUT [SEED]          the fork's own initialisation (srand(SEED), default 1), saved
//   ab_tool resave CFG IN OUT            IN loaded and saved again (save_weights)
//   ab_tool forward CFG WEIGHTS SEED OUT [fuse]
//       one batch-1 inference forward pass of a seeded uniform [0, 1) input
//       (fuse: after fuse_conv_batchnorm, as `detector test` runs); OUT gets,
//       for every layer with an output, int32 index, type, count, then count floats.
//   ab_tool forward2 CFG FIRST SECOND SEED OUT
//       as forward (not fused), but on one net FIRST is loaded and run, then
//       SECOND loaded over it and run: OUT holds the second pass
//   ab_tool ema CFG IN OUT
//       the EMA path of training, in-process: IN loaded into a training net,
//       ema_update(net, 0) (EMA initialisation), then every EMA copy of a zero
//       weight made stale (set to 1, as when a weight is zeroed after the EMA
//       began), ema_update(net, 0.5), ema_apply, save_weights OUT
//   ab_tool save-twice CFG IN OUT1 OUT2   (patched build only; layers and [rnn] sub-layers)
//       IN loaded, saved to OUT1, every layer's prune_threshold set to 0, saved to OUT2
//   ab_tool update CFG IN OUT
//       one update_network of a fresh training net (every gradient 0) with IN
//       loaded, saved to OUT: what the update itself adds ([net] slim=, decay)
// The benchmarks' timing driver is the package's darknet_sparse/darknet/_ab_driver.c.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "darknet.h"
#include "parser.h"
#include "network.h"

// The fork seeds rand() with time(0) inside make_yolo_layer, so the weights
// it initialises after a [yolo] layer depend on the second.  The tool is
// linked from the fork's objects, so their calls of time() reach this one,
// which returns $AB_TOOL_TIME when it is set: two builds then initialise one
// cfg alike.
time_t time(time_t *out)
{
    struct timespec now;
    const char *fixed = getenv("AB_TOOL_TIME");
    time_t t;
    if (fixed) {
        t = (time_t)atoll(fixed);
    } else {
        clock_gettime(CLOCK_REALTIME, &now);
        t = now.tv_sec;
    }
    if (out) *out = t;
    return t;
}

static int usage(void)
{
    fprintf(stderr, "usage: ab_tool init CFG OUT [SEED] | resave CFG IN OUT | forward CFG WEIGHTS SEED OUT [fuse]\n");
    return 2;
}

// A fixed generator, so the input is the same for every build.
static float next_uniform(unsigned long long *state)
{
    *state = *state * 6364136223846793005ULL + 1442695040888963407ULL;
    return (float)((*state >> 40) & 0xffffff) / 16777216.0f;
}

static int forward(char *cfg, char *weights, char *second, unsigned long long seed, const char *out, int fuse)
{
    network net = parse_network_cfg_custom(cfg, 1, 1);
    load_weights(&net, weights);
    if (fuse) fuse_conv_batchnorm(net);
    int n = net.w * net.h * net.c, i;
    float *x = calloc(n, sizeof(float));
    for (i = 0; i < n; ++i) x[i] = next_uniform(&seed);
    network_predict(net, x);
    if (second) {
        load_weights(&net, second);
        network_predict(net, x);
    }
    FILE *fp = fopen(out, "wb");
    if (!fp) {
        perror(out);
        return 1;
    }
    for (i = 0; i < net.n; ++i) {
        layer l = net.layers[i];
        if (!l.output || l.outputs <= 0) continue;
        int head[3] = {i, (int)l.type, l.outputs};
        fwrite(head, sizeof(int), 3, fp);
        fwrite(l.output, sizeof(float), l.outputs, fp);
    }
    fclose(fp);
    free(x);
    return 0;
}

static int ema(char *cfg, char *in, char *out)
{
    network net = parse_network_cfg(cfg);  // training allocations: weight_updates, weights_ema
    int i, k;
    load_weights(&net, in);
    ema_update(net, 0);
    for (i = 0; i < net.n; ++i) {
        layer l = net.layers[i];
        if (l.type != CONVOLUTIONAL || !l.weights_ema) continue;
        for (k = 0; k < l.nweights; ++k) if (l.weights[k] == 0) l.weights_ema[k] = 1;
    }
    ema_update(net, 0.5);
    ema_apply(net);
    save_weights(net, out);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc < 2) return usage();
    if (!strcmp(argv[1], "init") && (argc == 4 || argc == 5)) {
        srand(argc == 5 ? (unsigned)atoi(argv[4]) : 1);
        network net = parse_network_cfg(argv[2]);
        save_weights(net, argv[3]);
        return 0;
    }
    if (!strcmp(argv[1], "resave") && argc == 5) {
        network net = parse_network_cfg(argv[2]);
        load_weights(&net, argv[3]);
        save_weights(net, argv[4]);
        return 0;
    }
    if (!strcmp(argv[1], "forward") && (argc == 6 || argc == 7)) {
        return forward(argv[2], argv[3], 0, strtoull(argv[4], 0, 10), argv[5], argc == 7 && !strcmp(argv[6], "fuse"));
    }
    if (!strcmp(argv[1], "forward2") && argc == 7) return forward(argv[2], argv[3], argv[4], strtoull(argv[5], 0, 10),
                                                                  argv[6], 0);
    if (!strcmp(argv[1], "ema") && argc == 5) return ema(argv[2], argv[3], argv[4]);
    if (!strcmp(argv[1], "update") && argc == 5) {
        network net = parse_network_cfg(argv[2]);
        load_weights(&net, argv[3]);
        update_network(net);
        save_weights(net, argv[4]);
        return 0;
    }
#ifdef DS_PRUNE_THRESHOLD
    if (!strcmp(argv[1], "save-twice") && argc == 6) {
        network net = parse_network_cfg(argv[2]);
        int i;
        load_weights(&net, argv[3]);
        save_weights(net, argv[4]);
        for (i = 0; i < net.n; ++i) {  // the layers and the rnn sub-layers the test cfg has
            layer *l = net.layers + i;
            l->prune_threshold = 0;
            if (l->type == RNN) l->input_layer->prune_threshold = l->self_layer->prune_threshold = 0,
                                l->output_layer->prune_threshold = 0;
        }
        save_weights(net, argv[5]);
        return 0;
    }
#endif
    return usage();
}
