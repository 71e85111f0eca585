/* Detection through the binding, as the fork's `darknet detector test` does
 * it (test_detector; the calls are the fork glue's fork_detect): pjreddie's
 * load_image_color and letterbox_image, AlexeyAB's load_image and
 * resize_image (letterbox_image with [net] letter_box=1), one forward pass
 * at batch 1, get_network_boxes over every detection layer, and the fork's
 * NMS with the last layer's class count.  Included by _shim.c, so it sees
 * the ds_net handle and the fork_* calls; it uses nothing the patches add.
 *
 * load_image_color exits on a file stb_image cannot decode, so the image is
 * first asked of stb_image's own stbi_info (built into libdarknet).  And
 * get_network_boxes sizes each box's probabilities by the last layer's
 * classes, so the last layer must be a detection layer whose class count
 * every detection layer shares. */

int stbi_info(char const *filename, int *x, int *y, int *comp);  /* stb_image.h, in image.c */
const char *stbi_failure_reason(void);

static int is_detection_layer(LAYER_TYPE type)
{
    return fork_is_detection(type);  /* AlexeyAB's fork adds [Gaussian_yolo] */
}

/* Whether ds_detect letterboxes the image (pjreddie: always; AlexeyAB's
 * fork: only with [net] letter_box=1, else a plain resize). */
int ds_detect_letterbox(ds_net *h)
{
    return fork_letterbox(h->net);
}

/* As AlexeyAB's detector test -letter_box: letterbox from now on; -1 where
 * the fork has no such choice (pjreddie's always letterboxes). */
int ds_set_letterbox(ds_net *h, int on)
{
    return fork_set_letterbox(h->net, on);
}

/* Why get_network_boxes would overrun this net's buffers, or NULL. */
const char *ds_detector_error(ds_net *h)
{
    network *net = h->net;
    int i, classes = net->layers[net->n - 1].classes;
    if (!is_detection_layer(net->layers[net->n - 1].type)) return "the last layer is not [yolo], [region] or [detection]";
    if (net->c != 3) return "detector test feeds 3-channel images, and the network does not take 3 channels";
    for (i = 0; i < net->n; ++i)
        if (is_detection_layer(net->layers[i].type) && net->layers[i].classes != classes)
            return "the detection layers do not all have the last one's classes=";
    return NULL;
}

/* The class count of every box's probabilities: the last layer's. */
int ds_detector_classes(ds_net *h)
{
    return h->net->layers[h->net->n - 1].classes;
}

struct ds_dets {
    detection *dets;
    int n, classes, w, h;
};

/* The boxes of one image: probabilities at or below thresh are 0, and so are
 * those NMS suppressed (nms 0: no NMS).  Boxes are relative to the image:
 * centre x, y and width, height as fractions of its width and height.
 * NULL with *error set for a net that is no detector, a file stb_image
 * cannot read, or no memory. */
ds_dets *ds_detect(ds_net *h, const char *path, float thresh, float hier, float nms, const char **error)
{
    network *net = h->net;
    int batch = net->batch, width, height, channels;
    ds_dets *d;
    if ((*error = ds_detector_error(h))) return NULL;
    if (!stbi_info(path, &width, &height, &channels)) {
        *error = stbi_failure_reason();
        return NULL;
    }
    if (!(d = calloc(1, sizeof(*d)))) {
        *error = "out of memory";
        return NULL;
    }
    sync_weights(h);
    set_batch_network(net, 1);  /* as test_detector; also keeps yolo's flip averaging off */
    d->classes = ds_detector_classes(h);
    /* the fork's test_detector: its image preparation, forward, decode and NMS */
    d->dets = fork_detect(net, path, thresh, hier, nms, d->classes, &d->w, &d->h, &d->n);
    set_batch_network(net, batch);
    return d;
}

/* How many boxes, their probabilities' width, and the image's size; -1
 * for a negative count, or a positive one without the boxes. */
int ds_dets_count(ds_dets *d, int *classes, int *w, int *h)
{
    *classes = d->classes;
    *w = d->w;
    *h = d->h;
    return d->n < 0 || (d->n > 0 && !d->dets) ? -1 : d->n;
}

/* Copy the boxes out: boxes[4n] (x, y, w, h), probs[n * classes], objectness[n]. */
void ds_dets_read(ds_dets *d, float *boxes, float *probs, float *objectness)
{
    int i;
    for (i = 0; i < d->n; ++i) {
        box b = d->dets[i].bbox;
        boxes[4 * i] = b.x;
        boxes[4 * i + 1] = b.y;
        boxes[4 * i + 2] = b.w;
        boxes[4 * i + 3] = b.h;
        memcpy(probs + (size_t)i * d->classes, d->dets[i].prob, (size_t)d->classes * sizeof(float));
        objectness[i] = d->dets[i].objectness;
    }
}

void ds_dets_free(ds_dets *d)
{
    free_detections(d->dets, d->n);
    free(d);
}
