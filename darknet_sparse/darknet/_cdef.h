/* The binding's C API (_darknet_shim.c): opaque handles, never Darknet's structs. */
typedef struct ds_net ds_net;
typedef struct { int batch, max_batch, subdivisions, inputs, truths, outputs, c, h, w, layers; } ds_info;
ds_net *ds_load(const char *cfg, const char *weights, int clear);
void ds_free(ds_net *net);
void ds_seed(unsigned int seed);
const char *ds_fork(void);  /* "pjreddie" or "alexeyab": the fork this binding was built against */
float ds_rolling_rate(void);  /* the weight of one batch in batch norm's rolling statistics */
void ds_get_info(ds_net *net, ds_info *info);
const char *ds_layer_type(ds_net *net, int index);
int ds_set_batch(ds_net *net, int batch);
int ds_forward(ds_net *net, const float *x, float *out, int n, int train);
int ds_train(ds_net *net, const float *x, const float *y, int n, int iterations, float *losses);
int ds_save(ds_net *net, const char *path);
/* detection (_shim_detect.c): detector test's image preparation, decode and NMS */
typedef struct ds_dets ds_dets;
const char *ds_detector_error(ds_net *net);
int ds_detector_classes(ds_net *net);
int ds_detect_letterbox(ds_net *net);
int ds_set_letterbox(ds_net *net, int on);
ds_dets *ds_detect(ds_net *net, const char *image, float thresh, float hier, float nms, const char **error);
int ds_dets_count(ds_dets *dets, int *classes, int *w, int *h);
void ds_dets_read(ds_dets *dets, float *boxes, float *probs, float *objectness);
void ds_dets_free(ds_dets *dets);
/* sparse: only against a patched Darknet (DARKNET_SPARSE) */
float *ds_param(ds_net *net, int index, int k, const char **sub, const char **name, int *count);
int ds_get_prune(ds_net *net, int index, float *threshold);
int ds_set_prune(ds_net *net, int prune);
int ds_set_threshold(ds_net *net, int index, float threshold);
int ds_on_gpu(ds_net *net);
/* outputs (_shim_outputs.c): any layer's output from the last pass */
const float *ds_layer_output(ds_net *net, int index, int *count);
