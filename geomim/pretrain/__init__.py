"""GeoMIM pretraining: complementary masking, the two-branch decoder, view transform, losses."""
