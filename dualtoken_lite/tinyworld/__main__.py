"""``python -m dualtoken_lite.tinyworld --out data/tinyworld``: write the tiny world's shards."""

from dualtoken_lite.tinyworld.shards import main

main()
