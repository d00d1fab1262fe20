            %{{o}}bo{{jh}}0 = arith.addi %wb{{j}}, %{{o}}kw : index
            %{{o}}bo{{jh}}1 = arith.constant {{offset}} : index
            %{{o}}bo{{jh}} = arith.addi %{{o}}bo{{jh}}0, %{{o}}bo{{jh}}1 : index
            %{{o}}bw{{jh}} = memref.load %wt[%{{o}}bo{{jh}}] : memref<?xvector<4xi32>>
