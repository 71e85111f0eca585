"""Test helpers: the stock Darknet oracle and the cfgs the tests run over."""
