"""Contract floor, under every stage: the policy spec, the policy and engine file formats with
their seals, atomic writes, the usage error, the latency summary. Pure Python with numpy and
onnx at most: a robot imports it, so nothing here may import jax or another crl floor.
"""
