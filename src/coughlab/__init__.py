"""coughlab: public cough recordings -> COVID-19 cough classifier -> AWS Lambda."""

LABELS = ("negative", "positive")
SPLITS = ("train", "valid", "test")
