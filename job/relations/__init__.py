"""The relation classifier: one interface (base), the method table (methods), logistic (classify),
cross_encoder, predict."""
