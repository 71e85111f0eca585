/* The C side of darknet_sparse.darknet: a handful of calls on an opaque
 * handle, so the cdef never mirrors Darknet's structs.  Built by
 * _darknet_build.py against a built Darknet tree; the prune part needs the
 * patched darknet.h (DARKNET_SPARSE).  Arguments are checked in Python
 * first; the checks here only keep a bad call from corrupting memory. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "darknet.h"
#include "_cdef.h"

char *get_layer_string(LAYER_TYPE a);  /* network.c; not in darknet.h */

struct ds_net {
    network *net;
    int max_batch;   /* the batch the cfg sized every buffer for */
    float *scratch;  /* one batch of input, for a short last chunk */
    int views;       /* ds_param handed out writable views of the weights */
};

/* Weights written through the views are invisible to the sparse forward
 * pass's compressed copy: once views exist, rebuild it before using the net. */
static void sync_weights(ds_net *h)
{
#ifdef DARKNET_SPARSE_FORWARD
    if (h->views) invalidate_sparse_forward_network(h->net);
#else
    (void)h;
#endif
}

ds_net *ds_load(const char *cfg, const char *weights, int clear)
{
    ds_net *h = calloc(1, sizeof(*h));
    if (!h) return NULL;
    h->net = load_network((char *)cfg, (char *)weights, clear);
    h->max_batch = h->net->batch;
    h->scratch = calloc((size_t)h->net->inputs * h->net->batch, sizeof(float));
    return h;
}

void ds_free(ds_net *h)
{
    free_network(h->net);
    free(h->scratch);
    free(h);
}

void ds_seed(unsigned int seed)
{
    srand(seed);
}

void ds_get_info(ds_net *h, ds_info *info)
{
    network *net = h->net;
    info->batch = net->batch;
    info->max_batch = h->max_batch;
    info->subdivisions = net->subdivisions;
    info->inputs = net->inputs;
    info->truths = net->truths;
    info->outputs = net->outputs;
    info->c = net->c;
    info->h = net->h;
    info->w = net->w;
    info->layers = net->n;
}

const char *ds_layer_type(ds_net *h, int index)
{
    if (index < 0 || index >= h->net->n) return NULL;
    return get_layer_string(h->net->layers[index].type);
}

int ds_set_batch(ds_net *h, int batch)
{
    if (batch < 1 || batch > h->max_batch) return -1;
    set_batch_network(h->net, batch);
    return 0;
}

/* Layers whose training-mode forward computes a loss against net->truth
 * without checking that there is one (forward_yolo_layer reads it at once).
 * Their outputs are the same in either mode. */
static int is_loss_layer(LAYER_TYPE type)
{
    return type == YOLO || type == REGION || type == DETECTION || type == ISEG;
}

/* network_predict, but in training mode: batch norm uses batch statistics
 * and updates its rolling ones; no truth, no gradient, no update.  The loop
 * is forward_network's, with the loss layers in inference mode: there is no
 * truth to compare with. */
static void forward_train(network *net, float *input)
{
    network orig = *net;
    int i;
#ifdef GPU
    if (net->gpu_index >= 0) {  /* the callers refuse a GPU net (check_host) */
        net->input = input, net->truth = 0, net->train = 1, net->delta = 0;
        forward_network(net);
        *net = orig;
        return;
    }
#endif
    net->input = input;
    net->truth = 0;
    net->delta = 0;
    for (i = 0; i < net->n; ++i) {
        layer l = net->layers[i];
        net->index = i;
        net->train = !is_loss_layer(l.type);
        l.forward(l, *net);
        net->input = l.output;
    }
    *net = orig;
}

/* n rows of x through the net, one batch at a time; the outputs go to out
 * (may be NULL).  A short last batch is padded with zeros. */
int ds_forward(ds_net *h, const float *x, float *out, int n, int train)
{
    network *net = h->net;
    int b = net->batch, i;
    if (n < 0 || (train && n % b)) return -1;
    sync_weights(h);
    for (i = 0; i < n; i += b) {
        int k = n - i < b ? n - i : b;
        float *in = (float *)x + (size_t)i * net->inputs;
        if (k < b) {
            memcpy(h->scratch, in, (size_t)k * net->inputs * sizeof(float));
            memset(h->scratch + (size_t)k * net->inputs, 0, (size_t)(b - k) * net->inputs * sizeof(float));
            in = h->scratch;
        }
        if (train) forward_train(net, in);
        else network_predict(net, in);
        if (out) memcpy(out + (size_t)i * net->outputs, net->output, (size_t)k * net->outputs * sizeof(float));
    }
    return 0;
}

/* iterations passes of Darknet's train_network over the n rows of (x, y);
 * losses[i] is what pass i returned. */
int ds_train(ds_net *h, const float *x, const float *y, int n, int iterations, float *losses)
{
    network *net = h->net;
    data d = {0};
    int i;
    if (n < 1 || n % net->batch) return -1;
    sync_weights(h);
    d.X.rows = d.y.rows = n;
    d.X.cols = net->inputs;
    d.y.cols = net->truths;
    d.X.vals = malloc(n * sizeof(float *));
    d.y.vals = malloc(n * sizeof(float *));
    if (!d.X.vals || !d.y.vals) {
        free(d.X.vals);
        free(d.y.vals);
        return -1;
    }
    for (i = 0; i < n; ++i) {
        d.X.vals[i] = (float *)x + (size_t)i * d.X.cols;
        d.y.vals[i] = (float *)y + (size_t)i * d.y.cols;
    }
    for (i = 0; i < iterations; ++i) losses[i] = train_network(net, d);
    free(d.X.vals);
    free(d.y.vals);
    return 0;
}

/* save_weights exit()s when it cannot open the file: open it here first,
 * so a bad path is a -1 the caller reports. */
int ds_save(ds_net *h, const char *path)
{
    FILE *fp = fopen(path, "wb");
    if (!fp) return -1;
    fclose(fp);
    save_weights(h->net, (char *)path);
    return 0;
}

#ifdef DARKNET_SPARSE
/* One layer's own arrays (not its sub-layers'), as Darknet saves them; a
 * [batchnorm] layer's biases too, which it uses but never saves. */
static int layer_arrays(layer *l, float **ptr, const char **name, int *count)
{
    int biases, n = 0;
    switch (l->type) {
    case CONVOLUTIONAL:
    case DECONVOLUTIONAL:
        biases = l->n;
        break;
    case CONNECTED:
    case LOCAL:
        biases = l->outputs;
        break;
    case BATCHNORM:
        biases = l->c;
        break;
    default:
        return 0;
    }
    ptr[n] = l->biases, name[n] = "biases", count[n++] = biases;
    if (l->batch_normalize || l->type == BATCHNORM) {
        ptr[n] = l->scales, name[n] = "scales", count[n++] = biases;
        ptr[n] = l->rolling_mean, name[n] = "rolling_mean", count[n++] = biases;
        ptr[n] = l->rolling_variance, name[n] = "rolling_variance", count[n++] = biases;
    }
    if (prune_weight_count(l)) ptr[n] = l->weights, name[n] = "weights", count[n++] = prune_weight_count(l);
    return n;
}

/* The k-th parameter array of a layer, its own first, then its sub-layers'
 * (*sub names the sub-layer, NULL for the layer's own); NULL past the last. */
float *ds_param(ds_net *h, int index, int k, const char **sub, const char **name, int *count)
{
    float *ptr[5];
    const char *names[5];
    int counts[5], i = 0, n;
    layer *l, *target;
    if (index < 0 || index >= h->net->n || k < 0) return NULL;
    l = target = h->net->layers + index;
    n = layer_arrays(l, ptr, names, counts);
    *sub = NULL;
    while (k >= n) {
        k -= n;
        if (!(target = prune_sublayer(l, i++, sub))) return NULL;
        n = layer_arrays(target, ptr, names, counts);
    }
    *name = names[k];
    *count = counts[k];
    h->views = 1;
    return ptr[k];
}

int ds_get_prune(ds_net *h, int index, float *threshold)
{
    if (index >= h->net->n) return -1;
    *threshold = index < 0 ? h->net->prune_threshold : h->net->layers[index].prune_threshold;
    return h->net->prune;
}

int ds_set_prune(ds_net *h, int prune)
{
    h->net->prune = prune;
    return 0;
}

/* One layer's save-time threshold, or (index < 0) the net's and every layer's. */
int ds_set_threshold(ds_net *h, int index, float threshold)
{
    int i;
    if (index >= h->net->n) return -1;
    if (index >= 0) {
        prune_set_threshold(h->net->layers + index, threshold);
        return 0;
    }
    h->net->prune_threshold = threshold;
    for (i = 0; i < h->net->n; ++i) prune_set_threshold(h->net->layers + i, threshold);
    return 0;
}
#endif

/* Whether the network computes on a GPU: the parameter views are then host
 * copies that its passes neither read nor update. */
int ds_on_gpu(ds_net *h)
{
#ifdef GPU
    return h->net->gpu_index >= 0;
#else
    (void)h;
    return 0;
#endif
}

#include "_shim_detect.c"  /* ds_detect: detection as `detector test` does it */
#include "_shim_outputs.c"  /* ds_layer_output: any layer's output, e.g. every [yolo] head */
#include "_shim_distill.c"  /* ds_distill_step: the distillation deltas of one batch */
