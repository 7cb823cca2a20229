"""Data plumbing: images in any form -> [-1, 1] tensors; shards and folders; the resumable, bad-sample-proof loader."""
