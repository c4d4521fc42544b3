"""Reading a tagged catalog back: a vector index over its embeddings, neighbours, a report."""
