"""Rules of docs/protocol.md whose check needs a setup of its own (processes
killed or stopped, CURVE keys, a Redis server, a GPU): rule id -> the tests,
elsewhere under tests/, that check it. tests/conformance/test_rules.py
checks that each of these tests exists."""
from __future__ import annotations

ELSEWHERE = {
    # A leaf serving models whose signatures declare reads, and torch's own casts.
    "batch.sliced": [
        "tests/root/test_sub_feature_e2e.py::test_messages_carry_the_read_bytes_only",
        "tests/trim/test_sub_feature.py::test_a_sliced_message_round_trips"],
    "batch.narrow": [
        "tests/trim/test_sub_feature.py::test_float32_narrowing_is_torchs_on_every_rounding_edge",
        "tests/trim/test_sub_feature.py::test_float64_narrowing_goes_through_float32_as_torchs_does",
        "tests/root/test_sub_feature_e2e.py::test_scores_with_sub_feature_trimming_are_the_untrimmed_scores_bit_for_bit"],
    # TorchRec models' grouped columns: a leaf serving them, and the layout TorchRec takes.
    "batch.grouped": [
        "tests/torchrec/test_grouped_serving.py::test_grouped_and_per_feature_scores_are_the_eager_models_bit_for_bit",
        "tests/torchrec/test_grouped.py::test_the_model_gets_views_on_the_message_and_each_user_list_once",
        "tests/trim/test_grouped.py::test_groups_carry_torchrecs_layout_and_the_members_go_only_there"],
    "pong.grouped-columns": [
        "tests/torchrec/test_grouped_serving.py::test_grouped_and_per_feature_scores_are_the_eager_models_bit_for_bit"],
    "pong.sub-feature-columns": [
        "tests/root/test_sub_feature_e2e.py::test_a_leaf_that_does_not_take_sub_feature_columns_gets_whole_features_counted"],
    "security.curve": [
        "tests/curve/test_curve.py::test_clients_without_an_authorized_key_get_no_service"],
    "error.store-unavailable": [
        "tests/featurestore/test_root_redis.py::test_redis_down_under_load_every_request_answered_in_time",
        "tests/featurestore/test_redis_hostile.py::test_a_trickling_redis_costs_each_request_its_budget_only",
        "tests/featurestore/test_redis_hostile.py::test_a_flushed_store_is_loud_until_loaded_again"],
    "score.missing": [
        "tests/featurestore/test_redis_hostile.py::test_each_reply_says_how_many_entities_were_missing_and_a_mostly_empty_answer_fails"],
    "error.store-record": [
        "tests/featurestore/test_redis_hostile.py::test_undecodable_values_are_missing_never_internal",
        "tests/featurestore/test_redis_hostile.py::test_a_value_over_the_size_limit_is_refused_unread"],
    "root.draining": [
        "tests/faults/test_root_drain.py::test_sigterm_under_load_leaves_no_request_without_a_reply"],
    "leaf-reply.connection-lost": [
        "tests/root/test_faults.py::test_a_leaf_whose_connection_drops_fails_its_models_at_once_not_at_the_deadline"],
    "client.connection-lost": [
        "tests/faults/test_root_drain.py::test_requests_sent_until_the_root_is_gone_each_get_one_reply",
        "tests/root/test_async_client.py::test_requests_a_dropped_connection_carried_are_answered_unavailable_by_the_client"],
    "leaf.model-error": [
        "tests/leaf/test_scoring.py::test_model_exception_is_a_model_error_and_leaf_keeps_serving"],
    "leaf.deadline-queue": [
        "tests/leaf/test_overload.py::test_backlog_past_its_deadline_is_answered_not_run",
        "tests/leaf/test_overload.py::test_dynamic_batching_skips_expired_requests"],
    "leaf.overloaded": [
        "tests/leaf/test_overload.py::test_full_queue_sheds_with_overloaded_and_leaf_stays_healthy"],
    "leaf.draining": ["tests/leaf/test_drain.py::test_drain_ends_while_a_client_keeps_sending"],
    "leaf-reply.draining": [
        "tests/root/test_router.py::test_shutting_down_is_resent_and_takes_the_replica_out_of_rotation",
        "tests/faults/test_rolling_restart.py::test_a_draining_pong_takes_the_replica_out_of_rotation"],
    "health.connection": [
        "tests/root/test_leaf_link.py::test_routing_follows_the_process_behind_the_endpoint",
        "tests/faults/test_rolling_restart.py::test_a_new_process_behind_an_endpoint_earns_routing_with_its_own_pong"],
    "shm.cleanup": [
        "tests/shm/test_transport.py::test_scores_equal_the_socket_path_and_the_ring_goes_on_exit",
        "tests/shm/test_kill_stress.py::test_kill_9_either_side_and_restart"],
    "shm.segment-file": [
        "tests/leaf/test_shm_descriptor_faults.py::test_descriptor_naming_a_directory_or_fifo_is_refused",
        "tests/leaf/test_shm_descriptor_faults.py::test_a_symlink_planted_under_a_segment_name_is_never_followed",
        "tests/leaf/test_shm_descriptor_faults.py::test_segments_not_owned_by_the_leafs_user_or_writable_by_others_are_refused"],
    "shm.truncated": [
        "tests/leaf/test_shm_descriptor_faults.py::test_a_segment_truncated_after_it_was_mapped_does_not_kill_the_leaf"],
    "shm.slot-ownership": [
        "tests/shm/test_transport.py::test_slot_held_past_the_deadline_until_the_reply"],
    "score.memory": [
        "tests/root/test_memory_limits.py::test_a_request_over_its_memory_limit_is_refused_naming_it",
        "tests/root/test_memory_limits.py::test_requests_over_the_roots_memory_get_overloaded_then_it_serves_again"],
    "shm.retry-socket": [
        "tests/root/test_router.py::test_a_resend_goes_over_the_socket"],
    "shm.reclaim": ["tests/shm/test_kill_stress.py::test_slots_of_a_killed_leaf_are_reclaimed"],
    "shm.slot-run": [   # the root's side: a real root's runs, scored as over the socket
        "tests/shm/test_transport.py::test_batches_larger_than_a_slot_span_contiguous_slots"],
    "shm.fallback": [
        "tests/shm/test_transport.py::test_batches_larger_than_the_ring_fall_back_to_the_socket",
        "tests/shm/test_transport.py::test_no_free_slot_falls_back_and_slots_come_back"],
    "score.reply-limit": [   # the cut itself: results a real root cannot be made to fail so big
        "tests/root/test_reply.py::test_a_reply_whose_errors_would_not_fit_is_cut_to_fit"],
    "shm.cuda": ["tests/shm/test_cuda.py::test_slots_are_pinned_once_and_dma_to_the_device"],
}
