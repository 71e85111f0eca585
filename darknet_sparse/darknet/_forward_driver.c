/* A small driver for one Darknet build, so tests and benchmarks can run the
 * stock and the patched build side by side on the same cfg and weights.
 * darknet_sparse/darknet/driver.py compiles it against a build's libdarknet.a (with
 * -DSPARSE_FORWARD for the patched build, which has the `paths` command):
 *
 *   forward_driver init CFG OUT.weights          save Darknet's initial weights
 *   forward_driver predict CFG WEIGHTS OUT.bin   batch 1, fixed input: every layer's
 *                                                output, in order, as raw float32
 *   forward_driver time CFG WEIGHTS REPEAT       median seconds per forward, batch 1:
 *                                                wall clock, then process CPU (all threads)
 *   forward_driver train CFG WEIGHTS OUT.weights STEPS OUT.bin
 *                                                STEPS passes over fixed data, one forward,
 *                                                save, then as predict (same process)
 *   forward_driver paths CFG WEIGHTS             per layer: 1 sparse path, 0 dense
 *   forward_driver sizes CFG                     per layer: its type and output floats
 *                                                (0: none), as predict writes them
 *   forward_driver layers CFG WEIGHTS REPEAT     per layer: its type and median seconds
 *                                                of its share of a forward (batch 1), as
 *                                                forward_network runs it (delta fill too)
 *
 * Everything runs on the CPU, also in a GPU build.
 */
#include "darknet.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

char *get_layer_string(LAYER_TYPE a);  /* src/network.h, not in darknet.h */

/* The same values in [0, 1) on every build and machine. */
static void fill_input(float *x, size_t n, unsigned seed)
{
    size_t i;
    for(i = 0; i < n; ++i){
        seed = seed*1664525u + 1013904223u;
        x[i] = (seed >> 8)/16777216.f;
    }
}

static network *load(char *cfg, char *weights, int batch1)
{
    network *net = load_network(cfg, weights, 0);
    if(batch1) set_batch_network(net, 1);
    return net;
}

static double clock_seconds(clockid_t clock)
{
    struct timespec t;
    clock_gettime(clock, &t);
    return t.tv_sec + t.tv_nsec*1e-9;
}

static double now(void) { return clock_seconds(CLOCK_MONOTONIC); }

static int by_value(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static int write_prediction(network *net, char *out)
{
    float *x = calloc(net->inputs, sizeof(float));
    FILE *fp = fopen(out, "wb");
    int i;
    if(!fp) return 1;
    fill_input(x, net->inputs, 1);
    network_predict(net, x);
    for(i = 0; i < net->n; ++i){
        layer l = net->layers[i];
        if(l.output && fwrite(l.output, sizeof(float), l.outputs, fp) != (size_t)l.outputs) return 1;
    }
    return fclose(fp) != 0;
}

static int time_forward(char *cfg, char *weights, int repeat)
{
    network *net = load(cfg, weights, 1);
    float *x = calloc(net->inputs, sizeof(float));
    double *t = calloc(repeat, sizeof(double)), *cpu = calloc(repeat, sizeof(double));
    int i;
    fill_input(x, net->inputs, 1);
    network_predict(net, x);
    for(i = 0; i < repeat; ++i){
        double start = now(), cpu_start = clock_seconds(CLOCK_PROCESS_CPUTIME_ID);
        network_predict(net, x);
        t[i] = now() - start;
        cpu[i] = clock_seconds(CLOCK_PROCESS_CPUTIME_ID) - cpu_start;
    }
    qsort(t, repeat, sizeof(double), by_value);
    qsort(cpu, repeat, sizeof(double), by_value);
    printf("%.6f %.6f\n", t[repeat/2], cpu[repeat/2]);
    return 0;
}

/* Fixed inputs, one-hot targets (class i % outputs), two batches per step.
 * The forward before the save makes the sparse copy current, so the
 * prediction after it shows whether the save (which may zero weights)
 * invalidated it. */
static int train(char *cfg, char *weights, char *out, int steps, char *prediction)
{
    network *net = load(cfg, weights, 0);
    data d = {0};
    int i;
    d.X = make_matrix(2*net->batch, net->inputs);
    d.y = make_matrix(2*net->batch, net->outputs);
    for(i = 0; i < d.X.rows; ++i){
        fill_input(d.X.vals[i], net->inputs, i + 1);
        d.y.vals[i][i % net->outputs] = 1;
    }
    for(i = 0; i < steps; ++i) train_network(net, d);
    set_batch_network(net, 1);
    network_predict(net, d.X.vals[0]);
    save_weights(net, out);
    return write_prediction(net, prediction);
}

static int sizes(char *cfg)
{
    network *net = load(cfg, 0, 1);
    int i;
    for(i = 0; i < net->n; ++i){
        layer l = net->layers[i];
        printf("%s %d\n", get_layer_string(l.type), l.output ? l.outputs : 0);
    }
    return 0;
}

/* forward_network's loop (network_predict's inference setting), each
 * layer's step timed on its own. */
static int time_layers(char *cfg, char *weights, int repeat)
{
    network *net = load(cfg, weights, 1);
    float *x = calloc(net->inputs, sizeof(float));
    double *t = calloc((size_t)repeat*net->n, sizeof(double));
    int r, i;
    fill_input(x, net->inputs, 1);
    network_predict(net, x);
    for(r = 0; r < repeat; ++r){
        network n = *net;
        n.input = x;
        n.truth = 0;
        n.train = 0;
        n.delta = 0;
        for(i = 0; i < n.n; ++i){
            layer l = n.layers[i];
            double start = now();
            n.index = i;
#ifdef SPARSE_FORWARD
            if(l.delta && sparse_forward_fills_delta(&n)) fill_cpu(l.outputs*l.batch, 0, l.delta, 1);
#else
            if(l.delta) fill_cpu(l.outputs*l.batch, 0, l.delta, 1);
#endif
            l.forward(l, n);
            n.input = l.output;
            t[(size_t)i*repeat + r] = now() - start;
        }
    }
    for(i = 0; i < net->n; ++i){
        qsort(t + (size_t)i*repeat, repeat, sizeof(double), by_value);
        printf("%s %.6f\n", get_layer_string(net->layers[i].type), t[(size_t)i*repeat + repeat/2]);
    }
    return 0;
}

#ifdef SPARSE_FORWARD
static int paths(char *cfg, char *weights)
{
    network *net = load(cfg, weights, 1);
    int i;
    for(i = 0; i < net->n; ++i) printf("%d\n", sparse_forward_path(net, i));
    return 0;
}
#endif

int main(int argc, char **argv)
{
    srand(1);
    gpu_index = -1;
    if(argc == 4 && !strcmp(argv[1], "init")){
        save_weights(load(argv[2], 0, 0), argv[3]);
        return 0;
    }
    if(argc == 5 && !strcmp(argv[1], "predict")) return write_prediction(load(argv[2], argv[3], 1), argv[4]);
    if(argc == 5 && !strcmp(argv[1], "time")) return time_forward(argv[2], argv[3], atoi(argv[4]));
    if(argc == 7 && !strcmp(argv[1], "train")) return train(argv[2], argv[3], argv[4], atoi(argv[5]), argv[6]);
    if(argc == 3 && !strcmp(argv[1], "sizes")) return sizes(argv[2]);
    if(argc == 5 && !strcmp(argv[1], "layers")) return time_layers(argv[2], argv[3], atoi(argv[4]));
#ifdef SPARSE_FORWARD
    if(argc == 4 && !strcmp(argv[1], "paths")) return paths(argv[2], argv[3]);
#endif
    fprintf(stderr, "usage: see the comment at the top of forward_driver.c\n");
    return 2;
}
