/* The fork glue for AlexeyAB's Darknet (the fork of yolov4 and yolov7):
 * the same static functions as _fork_pjreddie.c (see there), over this
 * fork's API: the network passed by value to most calls, a forward pass
 * over a network_state, get_network_boxes with `letter`, the cfg's own NMS
 * kind, and `detector test`'s plain resize unless [net] letter_box=1.
 * _shim.c includes it when the build passes -DDS_FORK_ALEXEYAB.
 *
 * The fork prints its parse report, and some warnings, on stdout; a
 * command's stdout is its report (or JSON), so those calls write to stderr. */
#include <unistd.h>

/* The fork's own, not in its darknet.h (src/network.h, parser.h, image.h). */
float train_network(network net, data d);
void save_weights(network net, char *filename);
image load_image(char *filename, int w, int h, int c);

#ifdef DS_PRUNE_THRESHOLD  /* patches/alexeyab: prune=1 and prune_threshold */
#define DS_PATCHED 1
void ds_each_weighted(layer *l, void (*fn)(layer *l, int n, void *arg), void *arg);  /* src/ds_prune.h */
int ds_weight_count(const layer *l);
#endif

static const char *fork_name(void)
{
    return "alexeyab";
}

/* A training-mode pass moves the rolling statistics by this share of the
 * batch's (this fork's forward_batchnorm_layer: .9 old + .1 new). */
static float fork_rolling_rate(void)
{
    return .1f;
}

/* The width of a training row of y: this fork never sets net->truths; its
 * train_network_datum hands the rows to the layers, which read the last
 * layer's truths (a detection head's boxes), else its outputs (a class). */
static int fork_truths(network *net)
{
    layer last = net->layers[net->n - 1];
    return last.truths ? last.truths : net->outputs;
}

/* Point stdout at stderr (returns the saved descriptor), and back. */
static int stdout_to_stderr(void)
{
    int saved;
    fflush(stdout);
    saved = dup(1);
    if (saved >= 0) dup2(2, 1);
    return saved;
}

static void stdout_back(int saved)
{
    fflush(stdout);
    if (saved < 0) return;
    dup2(saved, 1);
    close(saved);
}

static network *fork_load(const char *cfg, const char *weights, int clear)
{
    int saved = stdout_to_stderr();
    network *net = load_network((char *)cfg, (char *)weights, clear);
    stdout_back(saved);
    return net;
}

static void fork_free(network *net)
{
    free_network_ptr(net);  /* the arrays; load_network calloc'ed the struct */
    free(net);
}

static float *fork_predict(network *net, float *input)
{
    int saved = stdout_to_stderr();  /* the first gemm says which CPU features it uses */
    float *out = network_predict_ptr(net, input);
    stdout_back(saved);
    return out;
}

/* Layers whose training-mode forward reads state.truth unchecked (the
 * detection heads compute their loss at once); outputs are the same in
 * either mode. */
static int fork_is_loss(LAYER_TYPE type)
{
    return type == YOLO || type == GAUSSIAN_YOLO || type == REGION || type == DETECTION || type == ISEG
        || type == CONTRASTIVE;
}

/* network_predict in training mode: forward_network's loop over a
 * network_state with train=1, except for the loss layers (no truth): batch
 * norm uses batch statistics and updates its rolling ones; no gradient,
 * no update. */
static void fork_forward_train(network *net, float *input)
{
    network_state state = {0};  /* on the host: the callers refuse a GPU net (check_host) */
    int i, saved = stdout_to_stderr();
    state.net = *net;
    state.input = input;
    state.workspace = net->workspace;
    for (i = 0; i < net->n; ++i) {
        layer l = net->layers[i];
        state.index = i;
        state.train = !fork_is_loss(l.type);
        l.forward(l, state);
        state.input = l.output;
    }
    stdout_back(saved);
}

static float fork_train(network *net, data d)
{
    int saved = stdout_to_stderr();
    float loss = train_network(*net, d);
    stdout_back(saved);
    return loss;
}

static void fork_save(network *net, const char *path)
{
    int saved = stdout_to_stderr();
    save_weights(*net, (char *)path);
    stdout_back(saved);
}

/* Nothing to do: the fork's sparse forward pass (patches/alexeyab, 0003)
 * rebuilds its compressed copy whenever a hash of the weights changes. */
static void fork_weights_changed(network *net)
{
    (void)net;
}

static int fork_is_detection(LAYER_TYPE type)
{
    return type == YOLO || type == GAUSSIAN_YOLO || type == REGION || type == DETECTION;
}

/* Whether fork_detect letterboxes: [net] letter_box=1 (detector test's
 * -letter_box is not a cfg option; the caller may set it by cfg). */
static int fork_letterbox(network *net)
{
    return net->letter_box != 0;
}

/* detector test's -letter_box: what [net] letter_box=1 does. */
static int fork_set_letterbox(network *net, int on)
{
    net->letter_box = on != 0;
    return 0;
}

/* test_detector (src/detector.c): load_image with the net's channels,
 * letterbox_image if letter_box else resize_image, network_predict,
 * get_network_boxes with letter, then the last layer's NMS kind:
 * do_nms_sort, or diounms_sort with its beta_nms.  (test_detector also
 * fuses batch norm into the weights first; that changes only rounding,
 * and the binding keeps the net's arrays as they are.) */
static detection *fork_detect(network *net, const char *path, float thresh, float hier, float nms, int classes,
                              int *w, int *h, int *n)
{
    layer last = net->layers[net->n - 1];
    int letter = fork_letterbox(net);
    image im = load_image((char *)path, 0, 0, net->c);
    image sized = letter ? letterbox_image(im, net->w, net->h) : resize_image(im, net->w, net->h);
    detection *dets;
    fork_predict(net, sized.data);
    *w = im.w;
    *h = im.h;
    dets = get_network_boxes(net, im.w, im.h, thresh, hier, 0, 1, n, letter);
    if (nms > 0) {
        if (last.nms_kind == DEFAULT_NMS) do_nms_sort(dets, *n, classes, nms);
        else diounms_sort(dets, *n, classes, nms, last.nms_kind, last.beta_nms);
    }
    free_image(im);
    free_image(sized);
    return dets;
}

#ifdef DS_PATCHED
static int fork_weight_count(layer *l)
{
    return ds_weight_count(l);
}

/* The i-th sub-layer holding weights, in the order save_weights writes
 * them (the names as the weights layout calls them), NULL past the last. */
static layer *fork_sublayer(layer *l, int i, const char **name)
{
    static const char *rnn_names[] = {"input_layer", "self_layer", "output_layer"};
    static const char *gru_names[] = {"uz", "ur", "uh", "wz", "wr", "wh"};
    static const char *lstm_names[] = {"wf", "wi", "wg", "wo", "uf", "ui", "ug", "uo"};
    static const char *conv_lstm_names[] = {"vf", "vi", "vo", "wf", "wi", "wg", "wo", "uf", "ui", "ug", "uo"};
    layer *rnn[] = {l->input_layer, l->self_layer, l->output_layer};
    layer *gru[] = {l->uz, l->ur, l->uh, l->wz, l->wr, l->wh};
    layer *lstm[] = {l->wf, l->wi, l->wg, l->wo, l->uf, l->ui, l->ug, l->uo};
    layer *conv_lstm[] = {l->vf, l->vi, l->vo, l->wf, l->wi, l->wg, l->wo, l->uf, l->ui, l->ug, l->uo};
    const char **names;
    layer **subs;
    int n, k;
    if (l->type == RNN || l->type == CRNN) names = rnn_names, subs = rnn, n = 3;
    else if (l->type == GRU) names = gru_names, subs = gru, n = 6;
    else if (l->type == LSTM) names = lstm_names, subs = lstm, n = 8;
    else if (l->type == CONV_LSTM) names = conv_lstm_names, subs = conv_lstm, n = 11;
    else return NULL;
    /* Only those the cfg made (peephole, bottleneck): the others are NULL. */
    for (k = 0; k < n; ++k) {
        if (!subs[k]) continue;
        if (i-- == 0) {
            *name = names[k];
            return subs[k];
        }
    }
    return NULL;
}

static void set_threshold(layer *l, int n, void *arg)
{
    (void)n;
    l->prune_threshold = *(const float *)arg;
}

static void fork_set_threshold(layer *l, float threshold)
{
    l->prune_threshold = threshold;
    ds_each_weighted(l, set_threshold, &threshold);
}
#endif
