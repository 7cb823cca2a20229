"""Vector quantizers (notebooks 01-02): the nearest-code lookup and EMA codebook, one VQ, the residual quantizer."""
