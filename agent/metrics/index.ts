/** Metrics for Prometheus: the recorder fed by job events and the text-format collector. */
export { collectMetrics } from './collect';
export { DURATION_BUCKETS, MetricsRecorder, metricsFor, SIZE_BUCKETS } from './recorder';
export { CONTENT_TYPE, Histogram, type HistogramData, MetricsText, type Sample } from './text-format';
