"""How a model is scored: rating errors (RMSE, MAE) as all-reducible sums, and ranking metrics
(HR@K, NDCG@K) over unseen movies.
"""
