"""Text read as Darknet reads it: the cfg, the layout table, the weights file, statistics."""
