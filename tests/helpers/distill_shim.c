/* Test-only: knowledge distillation through the binding (src/distill.h of
 * the patched Darknet): one training-mode forward pass of a batch, then the
 * teacher's and the heads' distillation deltas, as train_network_datum runs
 * them, without the backward pass or an update.  For the tests of the deltas
 * against the loss.  helpers/distill_binding.py compiles the package's shim
 * with this file appended (so it sees the ds_net handle) into a module of
 * the tests' own; the package never ships it. */

#ifndef DARKNET_SPARSE_DISTILL
#error "the distillation tests need a Darknet with patches/0020-distill.patch"
#endif

/* x: one batch of input, y: one batch of truth.  delta (capacity floats)
 * receives layer index's delta; *loss its stated loss (distill_loss), or
 * the layer's own cost without a teacher.  Returns the floats written. */
int ds_distill_step(ds_net *h, const float *x, const float *y, int index, float *delta, int capacity, double *loss)
{
    network *net = h->net;
    int n;
    if (!ds_layer_output(h, index, &n) || n > capacity) return -1;  /* n: the size of its delta too */
    sync_weights(h);
    memcpy(net->input, x, (size_t)net->inputs * net->batch * sizeof(float));
    memcpy(net->truth, y, (size_t)net->truths * net->batch * sizeof(float));
    net->train = 1;
    forward_network(net);
    distill_network(net);
    net->train = 0;
    memcpy(delta, net->layers[index].delta, (size_t)n * sizeof(float));
    if (!net->distill) *loss = net->layers[index].cost ? net->layers[index].cost[0] : 0;
    else if (distill_loss(net, index, loss)) return -1;
    return n;
}
