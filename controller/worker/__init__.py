"""The CAD similarity worker: routing by policy, features, faiss search, run records."""
