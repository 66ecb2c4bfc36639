"""Labelling-tool exports (Pascal VOC XML, COCO JSON) converted once per node into a YOLO set."""
