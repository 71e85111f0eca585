/* Any layer's output, not only the last one's: a detector's first [yolo]
 * head sits in the middle of the network.  Included by _darknet_shim.c. */

/* Layer index's output from the last forward pass: *count values, batch rows
 * of l.outputs each (l.output, host memory); NULL for no such layer, or
 * one without an output buffer. */
const float *ds_layer_output(ds_net *h, int index, int *count)
{
    layer *l;
    if (index < 0 || index >= h->net->n) return NULL;
    l = h->net->layers + index;
    if (!l->output) return NULL;
    *count = l->outputs * l->batch;
    return l->output;
}
