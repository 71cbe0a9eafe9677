"""Everything that talks to AWS or runs inside it: SageMaker training, the Lambda deploy.

Kept free of imports: the training image runs coughlab.aws.container without boto3.
"""
