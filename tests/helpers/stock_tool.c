/* stock_tool: the stock (unpatched, Debian) Darknet library as a test oracle.
 *
 * Built by tests/conftest.py against /usr/lib/darknet/libdarknet.so and its
 * darknet.h.  Every command parses CFG with parse_network_cfg, which prints
 * Darknet's layer table (with the BFLOPs of each convolution) to stderr.
 *
 *   stock_tool init   CFG OUT          stock init, then save_weights
 *   stock_tool resave CFG IN OUT       load_weights, then save_weights
 *   stock_tool dump   CFG IN OUT.bin   load_weights, then write every array
 *                                      the loader filled to OUT.bin and one
 *                                      "layer name count" line per array to
 *                                      stdout, so the test can compare what
 *                                      stock Darknet holds in memory with
 *                                      what our reader sees in the file.
 *
 * OUT may be /dev/stdout to measure a file without storing it.
 */
#include <stdio.h>
#include <string.h>

#include "darknet.h"

static void put(FILE *out, int index, const char *prefix, const char *name,
                const float *data, int count)
{
    printf("%d %s%s %d\n", index, prefix, name, count);
    if (fwrite(data, sizeof(float), count, out) != (size_t)count) {
        perror("stock_tool: write");
    }
}

/* The batch-norm triple of a conv, connected or batchnorm layer. */
static void put_bn(FILE *out, int index, const char *prefix, const layer *l, int count)
{
    put(out, index, prefix, "scales", l->scales, count);
    put(out, index, prefix, "rolling_mean", l->rolling_mean, count);
    put(out, index, prefix, "rolling_variance", l->rolling_variance, count);
}

static void put_conv(FILE *out, int index, const char *prefix, const layer *l)
{
    put(out, index, prefix, "biases", l->biases, l->n);
    if (l->batch_normalize) put_bn(out, index, prefix, l, l->n);
    put(out, index, prefix, "weights", l->weights, l->nweights);
}

static void put_connected(FILE *out, int index, const char *prefix, const layer *l)
{
    put(out, index, prefix, "biases", l->biases, l->outputs);
    put(out, index, prefix, "weights", l->weights, l->inputs * l->outputs);
    if (l->batch_normalize) put_bn(out, index, prefix, l, l->outputs);
}

/* Sublayers of the recurrent types, named as darknet_sparse.format.layout names them. */
static void put_recurrent(FILE *out, int index, const layer *l)
{
    const layer *gru[] = {l->wz, l->wr, l->wh, l->uz, l->ur, l->uh};
    const char *gru_names[] = {"wz.", "wr.", "wh.", "uz.", "ur.", "uh."};
    const layer *lstm[] = {l->wi, l->wf, l->wo, l->wg, l->ui, l->uf, l->uo, l->ug};
    const char *lstm_names[] = {"wi.", "wf.", "wo.", "wg.", "ui.", "uf.", "uo.", "ug."};
    const layer *rnn[] = {l->input_layer, l->self_layer, l->output_layer};
    const char *rnn_names[] = {"input_layer.", "self_layer.", "output_layer."};
    int i;
    switch (l->type) {
    case RNN:
        for (i = 0; i < 3; ++i) put_connected(out, index, rnn_names[i], rnn[i]);
        break;
    case CRNN:
        for (i = 0; i < 3; ++i) put_conv(out, index, rnn_names[i], rnn[i]);
        break;
    case GRU:
        for (i = 0; i < 6; ++i) put_connected(out, index, gru_names[i], gru[i]);
        break;
    case LSTM:
        for (i = 0; i < 8; ++i) put_connected(out, index, lstm_names[i], lstm[i]);
        break;
    default:
        break;
    }
}

static int dump(network *net, const char *path)
{
    FILE *out = fopen(path, "wb");
    int i;
    if (!out) {
        perror(path);
        return 1;
    }
    for (i = 0; i < net->n; ++i) {
        const layer *l = &net->layers[i];
        switch (l->type) {
        case CONVOLUTIONAL:
        case DECONVOLUTIONAL:
            put_conv(out, i, "", l);
            break;
        case CONNECTED:
            put_connected(out, i, "", l);
            break;
        case BATCHNORM:
            put_bn(out, i, "", l, l->c);
            break;
        case LOCAL:
            put(out, i, "", "biases", l->biases, l->outputs);
            put(out, i, "", "weights", l->weights,
                l->size * l->size * l->c * l->n * l->out_h * l->out_w);
            break;
        default:
            put_recurrent(out, i, l);
        }
    }
    return fclose(out) != 0;
}

int main(int argc, char **argv)
{
    network *net;
    if (argc < 4 || (strcmp(argv[1], "init") && argc < 5)) {
        fprintf(stderr, "usage: %s init CFG OUT | resave CFG IN OUT | dump CFG IN OUT.bin\n", argv[0]);
        return 2;
    }
    net = parse_network_cfg(argv[2]);
    if (!strcmp(argv[1], "init")) {
        save_weights(net, argv[3]);
        return 0;
    }
    load_weights(net, argv[3]);
    if (!strcmp(argv[1], "resave")) {
        save_weights(net, argv[4]);
        return 0;
    }
    if (!strcmp(argv[1], "dump")) return dump(net, argv[4]);
    fprintf(stderr, "stock_tool: unknown command %s\n", argv[1]);
    return 2;
}
