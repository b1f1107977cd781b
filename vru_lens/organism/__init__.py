"""The VRU model organism: a small Llama trained from scratch on paper-style VRUBench with planted heads G.

``train`` trains it (task + list recall + interchange training that plants G), ``recipe`` is the
shipped configuration and writes the card, ``verify`` re-measures the ground truth on a loaded bridge.
"""
