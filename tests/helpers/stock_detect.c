/* stock_detect: what stock `darknet detector test` draws, with the boxes.
 *
 * The binary prints only "name: NN%" per detection and draws the boxes into
 * predictions.jpg.  This runs test_detector's steps (examples/detector.c)
 * with the stock library: load_network, set_batch_network(1),
 * load_image_color, letterbox_image, network_predict, get_network_boxes
 * (hier 0.5, relative), do_nms_sort(0.45) with the last layer's classes;
 * then, for every box and class draw_detections would print, one line
 *
 *     CLASS PERCENT LEFT RIGHT TOP BOTTOM
 *
 * PERCENT as draw_detections prints it (%.0f of prob*100) and the pixel box
 * as it computes the rectangle it draws (truncated, clipped to the image).
 * The tests check its CLASS PERCENT lines against the binary's own output.
 *
 *   stock_detect CFG WEIGHTS IMAGE THRESH
 */
#include <stdio.h>
#include <stdlib.h>

#include "darknet.h"

int main(int argc, char **argv)
{
    network *net;
    image im, sized;
    detection *dets;
    float thresh;
    int nboxes = 0, classes, i, j;
    if (argc != 5) {
        fprintf(stderr, "usage: %s CFG WEIGHTS IMAGE THRESH\n", argv[0]);
        return 2;
    }
    thresh = atof(argv[4]);
    net = load_network(argv[1], argv[2], 0);
    set_batch_network(net, 1);
    srand(2222222);
    im = load_image_color(argv[3], 0, 0);
    sized = letterbox_image(im, net->w, net->h);
    network_predict(net, sized.data);
    dets = get_network_boxes(net, im.w, im.h, thresh, .5, 0, 1, &nboxes);
    classes = net->layers[net->n - 1].classes;
    do_nms_sort(dets, nboxes, classes, .45);
    for (i = 0; i < nboxes; ++i) {
        box b = dets[i].bbox;
        int left = (b.x - b.w / 2.) * im.w;
        int right = (b.x + b.w / 2.) * im.w;
        int top = (b.y - b.h / 2.) * im.h;
        int bot = (b.y + b.h / 2.) * im.h;
        if (left < 0) left = 0;
        if (right > im.w - 1) right = im.w - 1;
        if (top < 0) top = 0;
        if (bot > im.h - 1) bot = im.h - 1;
        for (j = 0; j < classes; ++j)
            if (dets[i].prob[j] > thresh)
                printf("%d %.0f %d %d %d %d\n", j, dets[i].prob[j] * 100, left, right, top, bot);
    }
    free_detections(dets, nboxes);
    free_image(im);
    free_image(sized);
    free_network(net);
    return 0;
}
