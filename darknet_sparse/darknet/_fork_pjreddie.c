/* The fork glue for pjreddie's Darknet: the few calls whose names or
 * signatures differ between the forks, so that _shim.c is written once.
 * _shim.c includes this file, or _fork_alexeyab.c when the build passes
 * -DDS_FORK_ALEXEYAB; both define the same static functions:
 *
 *   fork_name, fork_rolling_rate, fork_truths, fork_load, fork_free, fork_predict, fork_forward_train,
 *   fork_train, fork_save, fork_weights_changed, fork_is_detection,
 *   fork_detect (image preparation, forward, decode and NMS as the fork's
 *   `detector test`), fork_letterbox, fork_set_letterbox; and where the fork is patched
 *   (DS_PATCHED): fork_weight_count, fork_sublayer, fork_set_threshold. */

#ifdef DARKNET_SPARSE
#define DS_PATCHED 1
#endif

static const char *fork_name(void)
{
    return "pjreddie";
}

/* A training-mode pass moves the rolling statistics by this share of the
 * batch's (forward_batchnorm_layer: .99 old + .01 new). */
static float fork_rolling_rate(void)
{
    return .01f;
}

static int fork_truths(network *net)
{
    return net->truths;
}

static network *fork_load(const char *cfg, const char *weights, int clear)
{
    return load_network((char *)cfg, (char *)weights, clear);
}

static void fork_free(network *net)
{
    free_network(net);
}

static float *fork_predict(network *net, float *input)
{
    return network_predict(net, input);
}

/* Layers whose training-mode forward computes a loss against net->truth
 * without checking that there is one (forward_yolo_layer reads it at once).
 * Their outputs are the same in either mode. */
static int fork_is_loss(LAYER_TYPE type)
{
    return type == YOLO || type == REGION || type == DETECTION || type == ISEG;
}

/* network_predict, but in training mode: batch norm uses batch statistics
 * and updates its rolling ones; no truth, no gradient, no update.  The loop
 * is forward_network's, with the loss layers in inference mode: there is no
 * truth to compare with. */
static void fork_forward_train(network *net, float *input)
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
        net->train = !fork_is_loss(l.type);
        l.forward(l, *net);
        net->input = l.output;
    }
    *net = orig;
}

static float fork_train(network *net, data d)
{
    return train_network(net, d);
}

static void fork_save(network *net, const char *path)
{
    save_weights(net, (char *)path);
}

/* Weights written through the views are invisible to the sparse forward
 * pass's compressed copy: rebuild it before the net is used again. */
static void fork_weights_changed(network *net)
{
#ifdef DARKNET_SPARSE_FORWARD
    invalidate_sparse_forward_network(net);
#else
    (void)net;
#endif
}

static int fork_is_detection(LAYER_TYPE type)
{
    return type == YOLO || type == REGION || type == DETECTION;
}

/* Whether fork_detect letterboxes: pjreddie's detector test always does. */
static int fork_letterbox(network *net)
{
    (void)net;
    return 1;
}

static int fork_set_letterbox(network *net, int on)
{
    (void)net;
    return on ? 0 : -1;
}

/* test_detector (examples/detector.c): load_image_color, letterbox_image,
 * network_predict, get_network_boxes, do_nms_sort with classes. */
static detection *fork_detect(network *net, const char *path, float thresh, float hier, float nms, int classes,
                              int *w, int *h, int *n)
{
    image im = load_image_color((char *)path, 0, 0);
    image sized = letterbox_image(im, net->w, net->h);
    detection *dets;
    network_predict(net, sized.data);
    *w = im.w;
    *h = im.h;
    dets = get_network_boxes(net, im.w, im.h, thresh, hier, 0, 1, n);
    if (nms > 0) do_nms_sort(dets, *n, classes, nms);
    free_image(im);
    free_image(sized);
    return dets;
}

#ifdef DS_PATCHED
static int fork_weight_count(layer *l)
{
    return prune_weight_count(l);
}

static layer *fork_sublayer(layer *l, int i, const char **name)
{
    return prune_sublayer(l, i, name);
}

static void fork_set_threshold(layer *l, float threshold)
{
    prune_set_threshold(l, threshold);
}
#endif
