        %ccw = arith.constant {{cw}} : index
        %cbw = arith.constant {{block_columns}} : index
        %cb00 = arith.muli %nb, %cbw : index
        %wcw = arith.muli %warp, %ccw : index
        %cbase = arith.addi %cb00, %wcw : index
        %eN = arith.muli %e, %cN : index
        %nm1 = arith.constant {{last}} : index
        %kw = arith.constant {{row_words}} : index
{{columns}}
