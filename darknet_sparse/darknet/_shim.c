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
#ifdef DS_FORK_ALEXEYAB  /* the fork's own calls (fork_*): _build.py passes the define */
#include "_fork_alexeyab.c"
#else
#include "_fork_pjreddie.c"
#endif

char *get_layer_string(LAYER_TYPE a);  /* network.c; not in darknet.h */

struct ds_net {
    network *net;
    int max_batch;   /* the batch the cfg sized every buffer for */
    float *scratch;  /* one batch of input, for a short last chunk */
    int views;       /* ds_param handed out writable views of the weights */
    int rebatch;     /* a short chunk may run at its own batch (no recurrent layer) */
};

/* Recurrent layers size their sub-layers' batches at parse time, which
 * set_batch_network does not reach: such a net always runs at its batch. */
static int can_rebatch(const network *net)
{
    int i;
    for (i = 0; i < net->n; ++i) {
        LAYER_TYPE t = net->layers[i].type;
        if (t == RNN || t == GRU || t == LSTM || t == CRNN) return 0;
#ifdef DS_FORK_ALEXEYAB
        if (t == CONV_LSTM) return 0;
#endif
    }
    return 1;
}

/* Weights written through the views are invisible to the sparse forward
 * pass's compressed copy: once views exist, rebuild it before using the net. */
static void sync_weights(ds_net *h)
{
    if (h->views) fork_weights_changed(h->net);
}

const char *ds_fork(void)
{
    return fork_name();
}

float ds_rolling_rate(void)
{
    return fork_rolling_rate();
}

ds_net *ds_load(const char *cfg, const char *weights, int clear)
{
    ds_net *h = calloc(1, sizeof(*h));
    if (!h) return NULL;
    h->net = fork_load(cfg, weights, clear);
    if (!h->net) {
        free(h);
        return NULL;
    }
    h->max_batch = h->net->batch;
    h->rebatch = can_rebatch(h->net);
    h->scratch = calloc((size_t)h->net->inputs * h->net->batch, sizeof(float));
    if (!h->scratch) {
        ds_free(h);
        return NULL;
    }
    return h;
}

void ds_free(ds_net *h)
{
    fork_free(h->net);
    free(h->scratch);
    free(h);
}

/* As [net] seed=N: a patched Darknet's seed_set (pjreddie, src/seed.c) or
 * ds_seed_set (AlexeyAB, src/ds_seed.c) is srand plus a note that a seed was
 * given, for its data-loading threads. */
void ds_seed(unsigned int seed)
{
#if defined(DARKNET_SPARSE_SEED)
    seed_set(seed);
#elif defined(DS_SEED)
    ds_seed_set(seed);
#else
    srand(seed);
#endif
}

void ds_get_info(ds_net *h, ds_info *info)
{
    network *net = h->net;
    info->batch = net->batch;
    info->max_batch = h->max_batch;
    info->subdivisions = net->subdivisions;
    info->inputs = net->inputs;
    info->truths = fork_truths(net);  /* the width of a training row of y */
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
        /* Inference on a short chunk (one image through a cfg with batch=64)
         * runs those k alone, not k plus b - k rows of zeros: each row's
         * output is the same at any batch in inference. */
        int rebatch = k < b && !train && h->rebatch;
        if (rebatch) {
            set_batch_network(net, k);
        } else if (k < b) {
            memcpy(h->scratch, in, (size_t)k * net->inputs * sizeof(float));
            memset(h->scratch + (size_t)k * net->inputs, 0, (size_t)(b - k) * net->inputs * sizeof(float));
            in = h->scratch;
        }
        float *result = net->output;
        if (train) fork_forward_train(net, in);  /* training mode, no truth: the fork's glue */
        else result = fork_predict(net, in);
        if (out) memcpy(out + (size_t)i * net->outputs, result, (size_t)k * net->outputs * sizeof(float));
        if (rebatch) set_batch_network(net, b);
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
    for (i = 0; i < iterations; ++i) losses[i] = fork_train(net, d);
    free(d.X.vals);
    free(d.y.vals);
    return 0;
}

/* save_weights exit()s when it cannot open the file: open it here first,
 * so a bad path is a -1 the caller reports.  It ignores failed writes (a
 * full disk), so the caller checks the saved file's size. */
int ds_save(ds_net *h, const char *path)
{
    FILE *fp = fopen(path, "wb");
    if (!fp) return -1;
    fclose(fp);
    fork_save(h->net, path);
    return 0;
}

#ifdef DS_PATCHED  /* the fork glue defines it for a patched build */
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
    if (fork_weight_count(l)) ptr[n] = l->weights, name[n] = "weights", count[n++] = fork_weight_count(l);
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
        if (!(target = fork_sublayer(l, i++, sub))) return NULL;
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
        fork_set_threshold(h->net->layers + index, threshold);
        return 0;
    }
    h->net->prune_threshold = threshold;
    for (i = 0; i < h->net->n; ++i) fork_set_threshold(h->net->layers + i, threshold);
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
