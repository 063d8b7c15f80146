"""Protocol front ends that only translate, and the one route table that picks them."""
