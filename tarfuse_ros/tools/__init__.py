"""Command-line tools: training, evaluation, bags and the demo."""
