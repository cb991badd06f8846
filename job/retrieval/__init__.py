"""Finding a ticket's duplicates: dense (cosine), lexical (BM25) and their fusion, scored as a search engine's
hybrid query scores them (job/retrieval/fusion.py)."""
