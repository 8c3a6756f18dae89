"""What `tune --objective` may ask for among the candidates that meet every budget."""

OBJECTIVES = {
    "robust": "the highest robust accuracy",
    "smallest": "the smallest model file",
    "fastest": "the lowest p90 latency (measured where measured, else predicted)",
}
