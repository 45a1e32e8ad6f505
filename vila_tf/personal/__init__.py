"""Your own taste (`vila-tf fit`, docs/personal.md): the labels users keep (scores, pairwise
preferences, XMP star ratings), the head learned from them with scikit-learn under nested
cross-validation, the personal SavedModel made from a base SavedModel with TensorFlow only, and the
report that says whether it worked. Above the TF Serving tooling (its warmup writer) in the
runtime's layers; never imports JAX."""
