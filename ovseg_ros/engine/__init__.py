"""The ROS-free engine: a camera frame in, everything the node publishes out (as arrays).

``frame_pipeline`` (the stages, in order) and ``frame_stream`` (the stages overlapped on
threads, several cameras batched) call down into ``image_codec`` (decoding), ``segmenter``
(the model facade), ``smoothing``, ``rendering``, ``points`` (depth to labeled points) and
``uploads``; ``vocabulary`` (names, text features, versions), ``cer_budget`` (CER's K under a
latency budget), ``camera_slots``, ``frame_stats`` and ``serial_worker`` sit beside them.
Nothing here imports ROS (a test checks it).
"""
